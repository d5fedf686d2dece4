//! gm-tests: helpers shared by the end-to-end and parity tests in `tests/`.

pub mod fixtures;
pub mod pth_writer;
