//! Tests of the built example modules: their shape against ABI v1. How they
//! behave when run is tested on the real runtime, in the host's integration
//! tests (`tests/examples/`).

mod shape;
