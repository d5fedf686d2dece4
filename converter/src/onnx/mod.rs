//! ONNX emission: protobuf messages and the graph builder on top of them.

pub mod builder;
pub mod proto;

pub use builder::{Attr, Dim, FloatType, GraphBuilder, Value};
