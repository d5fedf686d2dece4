//! Execution backends: one trait, one implementation per runtime.

pub mod ort;
pub mod ort_cuda;
pub mod tract;

use std::path::Path;

use thiserror::Error;

/// A host tensor going into or coming out of a model: row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One dimension of a model input as declared by the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputDim {
    Fixed(usize),
    Dynamic(String),
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("cannot load model {path}: {message}")]
    Load { path: String, message: String },
    #[error("input {input} has shape {found:?}, but model {model} expects {expected}")]
    InputShape {
        input: String,
        model: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error("running model {model} failed: {message}")]
    Run { model: String, message: String },
}

/// A loaded model ready to run on host tensors.
pub trait Backend {
    /// Short name for messages ("tract", "ort-cpu", …).
    fn name(&self) -> &'static str;
    /// Declared shape of the single input (`images`).
    fn input_shape(&self) -> &[InputDim];
    /// Names of the outputs, in order.
    fn output_names(&self) -> &[String];
    /// Runs the model; returns every output, in `output_names` order.
    fn run(&mut self, images: &HostTensor) -> Result<Vec<HostTensor>, BackendError>;
}

/// Checks `found` against the declared input dims, naming the input file and the model.
pub fn check_input_shape(
    declared: &[InputDim],
    found: &[usize],
    input: &Path,
    model: &Path,
) -> Result<(), BackendError> {
    let fits = declared.len() == found.len()
        && declared.iter().zip(found).all(|(d, &f)| match d {
            InputDim::Fixed(n) => *n == f,
            InputDim::Dynamic(_) => f > 0,
        });
    if fits {
        return Ok(());
    }
    let expected = declared
        .iter()
        .map(|d| match d {
            InputDim::Fixed(n) => n.to_string(),
            InputDim::Dynamic(s) => s.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(BackendError::InputShape {
        input: input.display().to_string(),
        model: model.display().to_string(),
        found: found.to_vec(),
        expected: format!("[{expected}] (float32, NCHW)"),
    })
}
