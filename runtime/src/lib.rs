//! `gm-runtime`: running exported GroupMamba models and checking their outputs.

pub mod backend;
pub mod classify;
pub mod image;
pub mod metadata;
pub mod npy;
pub mod validate;
