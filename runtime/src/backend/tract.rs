//! CPU backend through tract, with the selective-scan op registered.

use std::path::{Path, PathBuf};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use super::{Backend, BackendError, HostTensor, InputDim};

type Runnable = Arc<TypedRunnableModel>;

pub struct TractBackend {
    path: PathBuf,
    model: Runnable,
    input: Vec<InputDim>,
    outputs: Vec<String>,
}

impl TractBackend {
    pub fn load(path: &Path) -> Result<Self, BackendError> {
        let load_err = |e: TractError| BackendError::Load {
            path: path.display().to_string(),
            message: format!("{e:#}"),
        };
        let mut onnx = tract_onnx::onnx();
        gm_ops::tract_op::register(&mut onnx);
        let model = onnx.model_for_path(path).map_err(load_err)?;
        let fact = model.input_fact(0).map_err(load_err)?.clone();
        let shape = fact.shape.dims().cloned().collect::<Vec<_>>();
        let input = shape
            .iter()
            .map(|d| match d.concretize() {
                Some(dim) => match dim.to_usize() {
                    Ok(n) => InputDim::Fixed(n),
                    Err(_) => InputDim::Dynamic(dim.to_string()),
                },
                None => InputDim::Dynamic("?".to_string()),
            })
            .collect();
        let outputs = model
            .output_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or("output").to_string())
            .collect();
        let model = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(load_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            model,
            input,
            outputs,
        })
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn input_shape(&self) -> &[InputDim] {
        &self.input
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(&mut self, images: &HostTensor) -> Result<Vec<HostTensor>, BackendError> {
        let run_err = |e: TractError| BackendError::Run {
            model: self.path.display().to_string(),
            message: format!("{e:#}"),
        };
        let input = Tensor::from_shape(&images.shape, &images.data).map_err(run_err)?;
        let outputs = self.model.run(tvec!(input.into())).map_err(run_err)?;
        outputs
            .iter()
            .map(|t| {
                let view = t.to_plain_array_view::<f32>().map_err(run_err)?;
                Ok(HostTensor {
                    shape: view.shape().to_vec(),
                    data: view.iter().copied().collect(),
                })
            })
            .collect()
    }
}
