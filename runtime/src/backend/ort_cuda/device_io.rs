//! Runs through an I/O binding with device buffers (builds with the `cuda` feature, where every
//! node, the scan included, runs on the GPU): per input shape the input and every output get a
//! buffer from the session's CUDA allocator, bound once; a run copies the host batch into the
//! input buffer, runs the binding and copies the outputs back (`gm_ops::cuda` copies: no per-run
//! allocation and no helper sessions). The fixed addresses are what ONNX Runtime's CUDA graphs
//! need: with [`CudaOptions::cuda_graph`] the first run of each shape is captured (one
//! `gpu_graph_id` per shape) and later runs replay it.

use std::collections::HashMap;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, RunOptions, Session};
use ort::value::Tensor;

use super::super::ort::SessionModel;
use super::super::{BackendError, HostTensor};
use super::CudaOptions;

/// The device buffers of every input shape seen so far.
pub(super) struct DeviceIo {
    /// Per input shape (dropped before the allocator that made its buffers).
    bound: HashMap<Vec<usize>, Bound>,
    allocator: Allocator,
    device: i32,
    options: CudaOptions,
}

/// Device buffers of one input shape, bound to the session once.
struct Bound {
    input: Tensor<f32>,
    /// (name, buffer) of each output, in the model's order.
    outputs: Vec<(String, Tensor<f32>)>,
    binding: IoBinding,
    /// CUDA graph id of this shape (ONNX Runtime's `gpu_graph_id` run option).
    graph_id: usize,
    run_options: RunOptions,
}

impl DeviceIo {
    pub(super) fn new(
        session: &Session,
        device: i32,
        options: CudaOptions,
    ) -> Result<Self, String> {
        let info = MemoryInfo::new(
            AllocationDevice::CUDA,
            device,
            AllocatorType::Device,
            MemoryType::Default,
        );
        let allocator = info
            .and_then(|info| Allocator::new(session, info))
            .map_err(|e| format!("the CUDA allocator of GPU {device}: {e}"))?;
        Ok(Self {
            bound: HashMap::new(),
            allocator,
            device,
            options,
        })
    }

    pub(super) fn run(
        &mut self,
        model: &mut SessionModel,
        images: &HostTensor,
    ) -> Result<Vec<HostTensor>, BackendError> {
        let path = model.path().display().to_string();
        let run_err = |message: String| BackendError::Run {
            model: path.clone(),
            message,
        };
        if !self.bound.contains_key(&images.shape) {
            let bound = self.bind(model, &images.shape).map_err(run_err)?;
            self.bound.insert(images.shape.clone(), bound);
        }
        let bound = self.bound.get_mut(&images.shape).expect("bound above");
        // In place: the bound (and, with a graph, captured) address stays the same.
        // SAFETY: the buffer holds exactly images.shape's elements of f32, and the session is
        // idle (runs are synchronous).
        unsafe {
            gm_ops::cuda::copy_to_device(
                self.device,
                bound.input.data_ptr_mut(),
                as_bytes(&images.data),
            )
        }
        .map_err(|e| run_err(format!("copying the input to GPU {}: {e}", self.device)))?;
        model
            .session_mut()
            .run_binding_with_options(&bound.binding, &bound.run_options)
            .map_err(|e| {
                run_err(if self.options.cuda_graph {
                    format!(
                        "run with CUDA graph {}: {e} (a CUDA graph needs every node on the GPU; \
                         run without --cuda-graph otherwise)",
                        bound.graph_id
                    )
                } else {
                    format!("run: {e}")
                })
            })?;
        let mut result = Vec::with_capacity(bound.outputs.len());
        for (name, buffer) in &bound.outputs {
            let shape: Vec<usize> = buffer.shape().iter().map(|&d| d as usize).collect();
            let mut data = vec![0f32; shape.iter().product()];
            // SAFETY: the buffer was allocated with `shape` f32 elements; copy_to_host waits for
            // the run's work on the device first.
            unsafe {
                gm_ops::cuda::copy_to_host(self.device, as_bytes_mut(&mut data), buffer.data_ptr())
            }
            .map_err(|e| run_err(format!("copying output {name} to the host: {e}")))?;
            result.push(HostTensor { shape, data });
        }
        Ok(result)
    }

    /// Device buffers for a batch of `shape`: the input, and each output with the model's declared
    /// dims (a dynamic first dim is the batch). Graph ids count from 1 (0 is ONNX Runtime's
    /// default id, left unused).
    fn bind(&mut self, model: &mut SessionModel, shape: &[usize]) -> Result<Bound, String> {
        let input = Tensor::<f32>::new(&self.allocator, shape.to_vec())
            .map_err(|e| format!("allocating the input {shape:?} on GPU {}: {e}", self.device))?;
        let output_dims = model.output_dims();
        let input_name = model.input_name().to_string();
        let outputs = model.outputs.clone();
        let mut binding = model
            .session_mut()
            .create_binding()
            .map_err(|e| format!("creating the I/O binding: {e}"))?;
        binding
            .bind_input(input_name.as_str(), &input)
            .map_err(|e| format!("binding input {input_name}: {e}"))?;
        let mut buffers = Vec::with_capacity(outputs.len());
        for (name, dims) in outputs.iter().zip(&output_dims) {
            let dims = concrete_dims(dims, shape[0]).ok_or_else(|| {
                format!(
                    "output {name} has dims {dims:?}: only the first (the batch) may be dynamic \
                     for device buffers"
                )
            })?;
            let mut buffer = Tensor::<f32>::new(&self.allocator, dims.clone()).map_err(|e| {
                format!(
                    "allocating output {name} {dims:?} on GPU {}: {e}",
                    self.device
                )
            })?;
            binding
                .bind_output(name.as_str(), &mut buffer)
                .map_err(|e| format!("binding output {name}: {e}"))?;
            buffers.push((name.clone(), buffer));
        }
        let graph_id = self.bound.len() + 1;
        let mut run_options = RunOptions::new().map_err(|e| format!("run options: {e}"))?;
        if self.options.cuda_graph {
            run_options
                .set("gpu_graph_id", graph_id.to_string())
                .map_err(|e| format!("run option gpu_graph_id: {e}"))?;
        }
        Ok(Bound {
            input,
            outputs: buffers,
            binding,
            graph_id,
            run_options,
        })
    }
}

/// `dims` with a dynamic first dim replaced by `batch`; None if another dim is dynamic.
fn concrete_dims(dims: &[i64], batch: usize) -> Option<Vec<usize>> {
    dims.iter()
        .enumerate()
        .map(|(i, &d)| match (i, d) {
            (_, d) if d >= 0 => Some(d as usize),
            (0, _) => Some(batch),
            _ => None,
        })
        .collect()
}

fn as_bytes(data: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and u8 no alignment requirement.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), std::mem::size_of_val(data)) }
}

fn as_bytes_mut(data: &mut [f32]) -> &mut [u8] {
    // SAFETY: as in as_bytes; every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast(), std::mem::size_of_val(data)) }
}

#[cfg(test)]
mod tests {
    use super::concrete_dims;

    #[test]
    fn only_the_batch_may_be_dynamic() {
        assert_eq!(concrete_dims(&[-1, 1000], 8), Some(vec![8, 1000]));
        assert_eq!(concrete_dims(&[4, 1000], 8), Some(vec![4, 1000]));
        assert_eq!(concrete_dims(&[-1, -1], 8), None);
    }
}
