//! `gm-runtime`: running exported GroupMamba models and checking their outputs.

pub mod backend;
pub mod npy;
