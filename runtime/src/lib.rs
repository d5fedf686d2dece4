//! `gm-runtime`: running exported GroupMamba models and checking their outputs.

pub mod backend;
pub mod classify;
pub mod image;
pub mod metadata;
pub mod npy;
#[doc(hidden)]
pub mod testing;
pub mod validate;
