//! Storage compatibility: the data directories of earlier releases keep
//! opening.
//!
//! `tests/fixtures/storage/<release>/` holds, for each release whose storage
//! format the current code must read, the data directories of a dev node
//! (`dev.tar.zst`) and of a three-node cluster (`cluster.tar.zst`), both made by
//! [`generate`] with that release's code, and `expected.json`: the digest and
//! applied index each node stopped at and the answers its modules gave. The
//! current code opens every fixture, must reach the same digest, give the
//! same answers and accept new writes; the cluster must elect and take a new
//! member made by the current code.

pub(crate) mod fixture;
mod generate;
mod open;
mod refuse;
