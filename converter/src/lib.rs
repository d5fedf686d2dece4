//! gm-converter: GroupMamba checkpoint → ONNX.

pub mod tensor;
pub mod weights;
