//! ONNX emission: protobuf messages, the graph builder on top of them, and the op sinks that
//! write either into the graph or into a model-local function's body.

pub mod builder;
pub mod proto;
pub mod sink;

pub use builder::{Attr, Dim, FloatType, GraphBuilder, Value};
pub use sink::{FunctionBuilder, OpSink};
