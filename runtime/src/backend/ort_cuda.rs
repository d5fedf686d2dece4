//! ONNX Runtime on an NVIDIA GPU: the CUDA execution provider, in the process's ONNX Runtime
//! ([`super::ort::runtime`], e.g. `ORT_DYLIB_PATH=…/onnxruntime/capi/libonnxruntime.so.1.31.1` of
//! an `onnxruntime-gpu` wheel).
//!
//! The session gets the `ai.groupmamba` domain of [`super::ort::session_builder`]. When gm-runtime
//! is built with its `cuda` feature, that domain holds the CUDA kernels of `SelectiveScan`
//! (`gm_ops::ort_cuda_op`) and the whole model runs on the GPU; without it the scan runs on the CPU
//! kernel, ONNX Runtime copying its inputs and output between host and device
//! ([`scan_runs_on_gpu`] says which; `gm-run` prints it).
//!
//! With the `cuda` feature, runs go through an I/O binding with device buffers allocated once per
//! input shape (`device_io`), optionally captured as CUDA graphs ([`CudaOptions::cuda_graph`]).
//! Without it, host input and outputs: ONNX Runtime moves them (and the scan's operands) between
//! host and device.
//!
//! TF32 is off (`use_tf32 = 0`): an FP32 model gives FP32 results (the parity tests allow 1e-4).
//! The CUDA EP needs the CUDA 13 runtime, cuBLAS and cuDNN 9 libraries on the loader's path
//! (`LD_LIBRARY_PATH`; e.g. the `nvidia-*` pip packages' `lib` folders).

use std::fmt;
use std::path::Path;

use ort::ep::{ExecutionProvider, CUDA};

use super::ort::{check_custom_opset, session_builder, OrtRuntime, SessionModel};
use super::{Backend, BackendError, HostTensor, InputDim};

/// Where to run: `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(u32),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("device {s:?}: expected `cpu`, `cuda` or `cuda:N` (N = GPU index)");
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:").ok_or_else(bad)?;
                let n: u32 = index.parse().map_err(|_| bad())?;
                i32::try_from(n).map_err(|_| bad())?;
                Ok(Device::Cuda(n))
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this build has the CUDA kernel of `SelectiveScan` (feature `cuda`); without it the
/// scan runs on the CPU inside a CUDA session.
pub const fn scan_runs_on_gpu() -> bool {
    cfg!(feature = "cuda")
}

/// Where this build runs the scan, in words (for reports).
pub const fn scan_placement() -> &'static str {
    if scan_runs_on_gpu() {
        "scan on the GPU"
    } else {
        "scan on the CPU: gm-runtime built without its `cuda` feature"
    }
}

/// How the CUDA backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaOptions {
    /// Capture each input shape's run as a CUDA graph and replay it (ONNX Runtime's
    /// `enable_cuda_graph`).
    pub cuda_graph: bool,
}

#[cfg(feature = "cuda")]
mod device_io;

/// A model in a session with the CUDA execution provider on one GPU.
pub struct OrtCudaBackend {
    /// Device buffers per input shape (dropped before the session they were bound to).
    #[cfg(feature = "cuda")]
    io: device_io::DeviceIo,
    model: SessionModel,
    device: u32,
}

impl OrtCudaBackend {
    /// Loads `path` in `rt` on GPU `device`. Fails (never silently falls back to the CPU) when
    /// this ONNX Runtime has no CUDA provider, its libraries do not load, or there is no such GPU.
    pub fn load(
        rt: &'static OrtRuntime,
        path: &Path,
        device: u32,
        options: CudaOptions,
    ) -> Result<Self, BackendError> {
        let load_err = |message: String| BackendError::Load {
            path: path.display().to_string(),
            message,
        };
        match CUDA::is_available() {
            Ok(true) => (),
            Ok(false) => {
                return Err(load_err(format!(
                    "{} has no CUDA execution provider (it is a CPU build); use the library of \
                     `pip install onnxruntime-gpu` (ORT_DYLIB_PATH=…/onnxruntime/capi/libonnxruntime.so.1.x)",
                    rt.describe()
                )))
            }
            Err(e) => return Err(load_err(format!("cannot list ONNX Runtime's providers: {e}"))),
        }
        if options.cuda_graph && !scan_runs_on_gpu() {
            return Err(load_err(
                "CUDA graphs need every node on the GPU, and this build runs the scan on the CPU \
                 (build gm-runtime with its `cuda` feature)"
                    .to_string(),
            ));
        }
        let device_id = i32::try_from(device)
            .map_err(|_| load_err(format!("GPU index {device} is out of range")))?;
        let bytes = std::fs::read(path).map_err(|e| load_err(e.to_string()))?;
        check_custom_opset(path, &bytes)?;
        let provider = CUDA::default()
            .with_device_id(device_id)
            .with_tf32(false)
            .with_cuda_graph(options.cuda_graph)
            .build()
            .error_on_failure();
        let session = session_builder(rt)
            .and_then(|b| {
                b.with_execution_providers([provider])
                    .map_err(|e| ort::Error::new(e.to_string()))
            })
            .and_then(|mut b| {
                b.commit_from_memory(&bytes)
                    .map_err(|e| ort::Error::new(e.to_string()))
            })
            .map_err(|e| {
                load_err(format!(
                    "CUDA execution provider on GPU {device}: {e} ({}; the CUDA EP needs libcudart.so.13, \
                     libcublas.so.13 and libcudnn.so.9 on LD_LIBRARY_PATH and an NVIDIA GPU)",
                    rt.describe()
                ))
            })?;
        Ok(Self {
            #[cfg(feature = "cuda")]
            io: device_io::DeviceIo::new(&session, device_id, options).map_err(load_err)?,
            model: SessionModel::new(session, path)?,
            device,
        })
    }

    /// The GPU index.
    pub fn device(&self) -> u32 {
        self.device
    }
}

impl Backend for OrtCudaBackend {
    fn name(&self) -> &'static str {
        "ort-cuda"
    }

    fn input_shape(&self) -> &[InputDim] {
        &self.model.input
    }

    fn output_names(&self) -> &[String] {
        &self.model.outputs
    }

    fn run(&mut self, images: &HostTensor) -> Result<Vec<HostTensor>, BackendError> {
        #[cfg(feature = "cuda")]
        return self.io.run(&mut self.model, images);
        #[cfg(not(feature = "cuda"))]
        self.model.run(images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("CUDA:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert!("cuda:".parse::<Device>().is_err());
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("cuda:99999999999".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }
}
