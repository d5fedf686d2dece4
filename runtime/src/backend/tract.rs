//! CPU backend through tract, with the selective-scan op registered.
//!
//! The model is decluttered once with its symbolic batch, then optimised per batch size on first
//! use: with every dimension concrete, tract picks its specialised kernels (a direct depthwise
//! convolution instead of im2col + matrix product, packed matrix products), which more than
//! halves the run time of GroupMamba's graph.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use super::{Backend, BackendError, HostTensor, InputDim};

type Runnable = Arc<TypedRunnableModel>;

/// Threads of tract's matrix products, fixed at the first [`set_threads`] or model load.
static THREADS: OnceLock<usize> = OnceLock::new();

/// Runs tract's matrix products, and the images of a batch, on `threads` threads (`None`: one
/// per available core). A process-wide setting: only the first call (or the first model load)
/// takes effect. Returns the thread count in force.
pub fn set_threads(threads: Option<usize>) -> usize {
    *THREADS.get_or_init(|| {
        let n = threads
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
            .max(1);
        if n > 1 {
            use tract_linalg::multithread::{set_default_executor, Executor};
            set_default_executor(Executor::multithread(n));
        }
        n
    })
}

pub struct TractBackend {
    path: PathBuf,
    /// Decluttered, batch still symbolic.
    model: TypedModel,
    /// The symbolic batch dimension, if the input has one.
    batch: Option<Symbol>,
    /// Optimised runnables by batch size (one entry for a fixed-batch model).
    runnables: HashMap<usize, Runnable>,
    input: Vec<InputDim>,
    outputs: Vec<String>,
}

impl TractBackend {
    pub fn load(path: &Path) -> Result<Self, BackendError> {
        let load_err = |e: TractError| BackendError::Load {
            path: path.display().to_string(),
            message: format!("{e:#}"),
        };
        set_threads(None);
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
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(load_err)?;
        let batch = match shape.first().and_then(|d| d.concretize()) {
            Some(TDim::Sym(sym)) => Some(sym),
            _ => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            model,
            batch,
            runnables: HashMap::new(),
            input,
            outputs,
        })
    }

    /// The runnable plan for `batch` images, optimised on first use.
    pub fn runnable(&mut self, batch: usize) -> TractResult<Runnable> {
        let key = if self.batch.is_some() { batch } else { 0 };
        if let Some(r) = self.runnables.get(&key) {
            return Ok(r.clone());
        }
        let model = match &self.batch {
            Some(sym) => {
                let subs = HashMap::from([(sym.clone(), TDim::Val(batch as i64))]);
                self.model.set_symbols(&subs)?
            }
            None => self.model.clone(),
        };
        let runnable = model.into_optimized()?.into_runnable()?;
        self.runnables.insert(key, runnable.clone());
        Ok(runnable)
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

    /// A batch of N > 1 images of a dynamic-batch model runs image by image through the batch-1
    /// plan, images spread over the [`set_threads`] threads: tract's batched plan of this graph
    /// is slower than N single-image runs (at batch 8 it moves axes and falls back to eager
    /// im2col for the strided convolutions: 2.9 s against 8 × 0.19 s here), and tract runs only
    /// its matrix products on several threads.
    fn run(&mut self, images: &HostTensor) -> Result<Vec<HostTensor>, BackendError> {
        let path = self.path.display().to_string();
        let run_err = |e: TractError| BackendError::Run {
            model: path.clone(),
            message: format!("{e:#}"),
        };
        let batch = images.shape.first().copied().unwrap_or(1);
        let per_image = self.batch.is_some() && batch > 1;
        let (runs, run_batch) = if per_image { (batch, 1) } else { (1, batch) };
        let model = self.runnable(run_batch).map_err(run_err)?;
        let image_len = images.data.len() / runs;
        let mut shape = images.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = run_batch;
        }
        let run_one = |i: usize| -> TractResult<Vec<HostTensor>> {
            let slice = &images.data[i * image_len..(i + 1) * image_len];
            let outputs = model.run(tvec!(Tensor::from_shape(&shape, slice)?.into()))?;
            outputs
                .iter()
                .map(|t| {
                    let view = t.to_plain_array_view::<f32>()?;
                    Ok(HostTensor {
                        shape: view.shape().to_vec(),
                        data: view.iter().copied().collect(),
                    })
                })
                .collect()
        };
        // Each worker takes a contiguous range of images; joined in order, the results are in
        // image order.
        let per_worker = runs.div_ceil(runs.min(set_threads(None)));
        let results: Vec<TractResult<Vec<HostTensor>>> = if per_worker == runs {
            (0..runs).map(run_one).collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..runs)
                    .step_by(per_worker)
                    .map(|start| {
                        let run_one = &run_one;
                        let images = start..(start + per_worker).min(runs);
                        scope.spawn(move || images.map(run_one).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("tract worker panicked"))
                    .collect()
            })
        };
        let mut merged: Vec<HostTensor> = Vec::new();
        for result in results {
            for (k, out) in result.map_err(run_err)?.into_iter().enumerate() {
                match merged.get_mut(k) {
                    Some(m) => m.data.extend(out.data),
                    None => merged.push(out),
                }
            }
        }
        if per_image {
            for out in &mut merged {
                if let Some(first) = out.shape.first_mut() {
                    *first *= runs;
                }
            }
        }
        Ok(merged)
    }
}
