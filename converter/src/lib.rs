//! gm-converter: builds the GroupMamba graph in Rust from official checkpoints and writes ONNX
//! with the selective scan as a custom operator (`ai.groupmamba::SelectiveScan`).

pub mod export;
pub mod model;
pub mod onnx;
pub mod tensor;
pub mod weights;
