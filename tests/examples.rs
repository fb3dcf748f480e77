//! The example modules and the ABI's WAT example, built by the build and run
//! on the real runtime.

mod host;
mod run;
mod wat_example;
