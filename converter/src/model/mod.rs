//! The GroupMamba architecture as Rust types mirroring the official modules. Each module lists
//! its parameters (official state_dict names) and emits its part of the ONNX graph.

pub mod block;
pub mod config;
pub mod emit;
pub mod function_scan;
pub mod layer;
pub mod network;
pub mod params;
pub mod portable_scan;
pub mod recurrence;

pub use config::ModelConfig;
pub use network::GroupMamba;
