//! CPU backend through ONNX Runtime (the `ort` crate, library loaded at run time), with the
//! selective-scan op registered in-process (`gm_ops::ort_op`).
//!
//! Finding ONNX Runtime ([`locate_library`]):
//! 1. `ORT_DYLIB_PATH`: a `libonnxruntime.so*` file, or a folder holding one;
//! 2. an installed Python onnxruntime: `python3 -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))'`,
//!    then `capi/libonnxruntime.so.*` there (wheels >= 1.19 ship it).
//!
//! Before ONNX Runtime is used, the library file is checked ([`probe_library`]): an ELF shared
//! object for this machine's architecture that exports `OrtGetApiBase`, version >= 1.17 (C API 17,
//! what `ort` is built against here). Each failure says what was found and what is needed. The
//! first library that passes is used for the rest of the process ([`runtime`]): ONNX Runtime
//! allows one environment per process.
//!
//! A model's `ai.groupmamba` operator-set import is checked before the session is created
//! ([`check_custom_opset`]): ONNX Runtime does not enforce custom-op versions itself.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorRef, ValueType};
use thiserror::Error;

use super::{Backend, BackendError, HostTensor, InputDim};

/// Minimum ONNX Runtime minor version: the C API version `ort` is built against.
pub const MIN_MINOR: u32 = ort::MINOR_VERSION;
/// Environment variable naming the ONNX Runtime library (file or folder).
pub const ENV_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
const PYTHON: &str = "python3";
const PYTHON_PROBE: &str = "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))";

/// Why ONNX Runtime cannot be used.
#[derive(Debug, Clone, Error)]
pub enum OrtError {
    /// No candidate library anywhere; `tried` lists each place and why it did not work.
    #[error(
        "no ONNX Runtime library found (needs libonnxruntime.so 1.{MIN_MINOR} or newer); tried:\n{}\n\
         install one with `python3 -m pip install onnxruntime` (>= 1.19), or set {ENV_DYLIB_PATH}=/path/to/libonnxruntime.so.1.x",
        tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n")
    )]
    NotFound { tried: Vec<String> },
    /// The file is not an ELF shared library.
    #[error("{path} is not an ONNX Runtime shared library: {found}; needs an ELF shared object (libonnxruntime.so) for {needed}")]
    NotElf {
        path: PathBuf,
        found: String,
        needed: String,
    },
    /// The file is built for another machine.
    #[error("{path} is built for {found}; this program needs ONNX Runtime built for {needed}")]
    WrongArchitecture {
        path: PathBuf,
        found: String,
        needed: String,
    },
    /// dlopen failed.
    #[error("cannot load {path}: {message}")]
    Dlopen { path: PathBuf, message: String },
    /// Loaded, but it is not ONNX Runtime.
    #[error("{path} does not export OrtGetApiBase: it is not an ONNX Runtime library")]
    NotOnnxRuntime { path: PathBuf },
    /// Too old (or not 1.x).
    #[error("{path} is ONNX Runtime {found}; needs ONNX Runtime 1.{MIN_MINOR} or newer (1.x); upgrade with `python3 -m pip install -U onnxruntime`")]
    TooOld { path: PathBuf, found: String },
    /// A different library was already loaded in this process.
    #[error("ONNX Runtime was already loaded from {loaded} in this process; cannot switch to {requested}")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
    /// ONNX Runtime itself failed to start.
    #[error("ONNX Runtime {version} from {path} failed to start: {message}")]
    Init {
        path: PathBuf,
        version: String,
        message: String,
    },
}

/// A candidate library and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    /// "ORT_DYLIB_PATH" or "Python onnxruntime at …".
    pub source: String,
}

/// Finds the ONNX Runtime library: `ORT_DYLIB_PATH`, else an installed Python onnxruntime.
pub fn locate_library() -> Result<Located, OrtError> {
    let mut tried = Vec::new();
    match std::env::var_os(ENV_DYLIB_PATH) {
        Some(value) if !value.is_empty() => {
            let path = PathBuf::from(value);
            if path.is_dir() {
                if let Some(found) = newest_library_in(&path) {
                    return Ok(Located {
                        path: found,
                        source: format!("{ENV_DYLIB_PATH} folder"),
                    });
                }
                tried.push(format!(
                    "{ENV_DYLIB_PATH}={}: a folder without libonnxruntime.so*",
                    path.display()
                ));
            } else if path.is_file() {
                return Ok(Located {
                    path,
                    source: ENV_DYLIB_PATH.into(),
                });
            } else {
                tried.push(format!("{ENV_DYLIB_PATH}={}: no such file", path.display()));
            }
            // An explicit setting that does not work is an error, not a reason to look elsewhere.
            return Err(OrtError::NotFound { tried });
        }
        _ => tried.push(format!("{ENV_DYLIB_PATH}: not set")),
    }
    match python_onnxruntime_dir() {
        Ok(dir) => {
            let capi = dir.join("capi");
            if let Some(found) = newest_library_in(&capi) {
                return Ok(Located {
                    path: found,
                    source: format!("Python onnxruntime at {}", dir.display()),
                });
            }
            tried.push(format!(
                "Python onnxruntime at {}: {} has no libonnxruntime.so.* (wheels older than 1.19 do not ship it)",
                dir.display(),
                capi.display()
            ));
        }
        Err(why) => tried.push(format!("`{PYTHON} -c 'import onnxruntime'`: {why}")),
    }
    Err(OrtError::NotFound { tried })
}

fn python_onnxruntime_dir() -> Result<PathBuf, String> {
    let output = Command::new(PYTHON)
        .args(["-c", PYTHON_PROBE])
        .output()
        .map_err(|e| format!("cannot run {PYTHON}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed");
        return Err(last.trim().to_string());
    }
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if dir.is_empty() {
        return Err("printed no folder".into());
    }
    Ok(PathBuf::from(dir))
}

/// The `libonnxruntime.so[.1.x.y]` in `dir` with the highest version.
fn newest_library_in(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("libonnxruntime.so") else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('.')) {
            continue;
        }
        let version: Vec<u32> = rest
            .split('.')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, entry.path()));
        }
    }
    best.map(|(_, p)| p)
}

/// What [`probe_library`] found.
#[derive(Debug, Clone)]
pub struct LibraryInfo {
    pub path: PathBuf,
    /// `OrtGetApiBase()->GetVersionString()`, e.g. "1.32.0".
    pub version: String,
}

/// ELF `e_machine` → name, and the value this program needs.
fn machine_name(machine: u16) -> String {
    match machine {
        3 => "x86 (32-bit)".into(),
        8 => "mips".into(),
        20 => "powerpc".into(),
        21 => "powerpc64".into(),
        22 => "s390x".into(),
        40 => "arm (32-bit)".into(),
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "riscv".into(),
        258 => "loongarch".into(),
        other => format!("ELF machine {other}"),
    }
}

fn needed_machine() -> Option<u16> {
    Some(match std::env::consts::ARCH {
        "x86" => 3,
        "x86_64" => 62,
        "arm" => 40,
        "aarch64" => 183,
        "powerpc64" => 21,
        "s390x" => 22,
        "riscv64" => 243,
        "loongarch64" => 258,
        _ => return None,
    })
}

fn needed_description() -> String {
    format!(
        "{} ({}-bit, {})",
        std::env::consts::ARCH,
        usize::BITS,
        std::env::consts::OS
    )
}

/// Checks the file header: an ELF shared object of this machine's architecture and word size.
fn check_elf(path: &Path) -> Result<(), OrtError> {
    let mut header = [0u8; 20];
    let read = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut n = 0;
            while n < header.len() {
                let k = f.read(&mut header[n..])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            Ok(n)
        })
        .map_err(|e| OrtError::Dlopen {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let not_elf = |found: String| OrtError::NotElf {
        path: path.to_path_buf(),
        found,
        needed: needed_description(),
    };
    if read < header.len() || header[..4] != *b"\x7fELF" {
        return Err(not_elf(format!(
            "{read} bytes of header starting {:02x?}",
            &header[..read.min(4)]
        )));
    }
    let bits = match header[4] {
        1 => 32,
        2 => 64,
        other => return Err(not_elf(format!("ELF class {other}"))),
    };
    let little = match header[5] {
        1 => true,
        2 => false,
        other => return Err(not_elf(format!("ELF data encoding {other}"))),
    };
    let machine = if little {
        u16::from_le_bytes([header[18], header[19]])
    } else {
        u16::from_be_bytes([header[18], header[19]])
    };
    let found = format!(
        "{} ({bits}-bit, {}-endian)",
        machine_name(machine),
        if little { "little" } else { "big" }
    );
    let native_little = cfg!(target_endian = "little");
    let fits = needed_machine().is_none_or(|m| m == machine)
        && bits == usize::BITS
        && little == native_little;
    if !fits {
        return Err(OrtError::WrongArchitecture {
            path: path.to_path_buf(),
            found,
            needed: needed_description(),
        });
    }
    Ok(())
}

/// Parses "1.x.y" into x when the major version is 1.
fn minor_of(version: &str) -> Option<u32> {
    version.strip_prefix("1.")?.split('.').next()?.parse().ok()
}

/// A library that passed the checks, loaded: the handle and its API base.
struct Probed {
    info: LibraryInfo,
    library: libloading::Library,
    base: *const ort::sys::OrtApiBase,
}

fn probe(path: &Path) -> Result<Probed, OrtError> {
    check_elf(path)?;
    // SAFETY: loading a shared library runs its initialisers; this is the library the user
    // pointed us to (or the Python package's), which we are about to use anyway.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| OrtError::Dlopen {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: OrtGetApiBase has this signature in every ONNX Runtime release.
    let base = unsafe {
        let get: libloading::Symbol<GetApiBase> =
            library
                .get(b"OrtGetApiBase\0")
                .map_err(|_| OrtError::NotOnnxRuntime {
                    path: path.to_path_buf(),
                })?;
        get()
    };
    if base.is_null() {
        return Err(OrtError::NotOnnxRuntime {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: a valid OrtApiBase; GetVersionString returns a static NUL-terminated string.
    let version = unsafe {
        let ptr = ((*base).GetVersionString)();
        if ptr.is_null() {
            String::from("(no version string)")
        } else {
            std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned()
        }
    };
    match minor_of(&version) {
        Some(minor) if minor >= MIN_MINOR => (),
        _ => {
            return Err(OrtError::TooOld {
                path: path.to_path_buf(),
                found: version,
            })
        }
    }
    Ok(Probed {
        info: LibraryInfo {
            path: path.to_path_buf(),
            version,
        },
        library,
        base,
    })
}

/// Checks that `path` is an ONNX Runtime library this program can use (architecture, exported
/// API, version >= 1.17), without starting it. Loads and unloads the library.
pub fn probe_library(path: &Path) -> Result<LibraryInfo, OrtError> {
    probe(path).map(|p| p.info)
}

/// ONNX Runtime, loaded and started: one per process.
pub struct OrtRuntime {
    pub library: LibraryInfo,
    /// How the library was found.
    pub source: String,
    environment: ort::environment::Environment,
}

impl fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrtRuntime")
            .field("library", &self.library)
            .field("source", &self.source)
            .finish()
    }
}

impl OrtRuntime {
    /// The environment sessions are created in.
    pub fn environment(&self) -> &ort::environment::Environment {
        &self.environment
    }

    /// "ONNX Runtime 1.32.0 (…/libonnxruntime.so.1.32.0, from ORT_DYLIB_PATH)".
    pub fn describe(&self) -> String {
        format!(
            "ONNX Runtime {} ({}, from {})",
            self.library.version,
            self.library.path.display(),
            self.source
        )
    }
}

static RUNTIME: Mutex<Option<&'static OrtRuntime>> = Mutex::new(None);

/// The process's ONNX Runtime: found with [`locate_library`] and started on first use.
pub fn runtime() -> Result<&'static OrtRuntime, OrtError> {
    if let Some(rt) = *RUNTIME.lock().unwrap_or_else(|e| e.into_inner()) {
        return Ok(rt);
    }
    let located = locate_library()?;
    runtime_from(&located)
}

/// Starts ONNX Runtime from `located` (or returns the one already started from the same file).
pub fn runtime_from(located: &Located) -> Result<&'static OrtRuntime, OrtError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = *slot {
        let same = std::fs::canonicalize(&rt.library.path).ok()
            == std::fs::canonicalize(&located.path).ok();
        return if same {
            Ok(rt)
        } else {
            Err(OrtError::AlreadyLoaded {
                loaded: rt.library.path.clone(),
                requested: located.path.clone(),
            })
        };
    }
    let probed = probe(&located.path)?;
    let init_err = |message: String| OrtError::Init {
        path: probed.info.path.clone(),
        version: probed.info.version.clone(),
        message,
    };
    // SAFETY: a valid OrtApiBase of ONNX Runtime >= 1.MIN_MINOR, which provides API MIN_MINOR.
    let api = unsafe { ((*probed.base).GetApi)(MIN_MINOR) };
    if api.is_null() {
        return Err(init_err(format!(
            "it does not provide C API version {MIN_MINOR}"
        )));
    }
    // Give `ort` this API before anything else uses it. This works whether `ort` is built with
    // `load-dynamic` alone (then its own loader is never asked) or, through cargo feature
    // unification with the custom-op library, also with `alternative-backend`.
    // SAFETY: the OrtApi stays valid: the library is never unloaded (leaked below).
    ort::set_api(unsafe { (*api).clone() });
    let environment = ort::init_from(&probed.info.path)
        .map_err(|e| init_err(e.to_string()))?
        .with_name("gm-runtime")
        .with_telemetry(false)
        .build()
        .map_err(|e| init_err(e.to_string()))?;
    // The API table lives in the library: keep it loaded for the life of the process.
    std::mem::forget(probed.library);
    let rt: &'static OrtRuntime = Box::leak(Box::new(OrtRuntime {
        library: probed.info,
        source: located.source.clone(),
        environment,
    }));
    *slot = Some(rt);
    Ok(rt)
}

/// The operator sets a model imports (ModelProto field 8), read without decoding the graph.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelOpsets {
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OpsetId>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OpsetId {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

/// Refuses a model that imports an `ai.groupmamba` version other than the one `gm_ops`
/// implements. Models that do not import the domain pass (ONNX Runtime reports any
/// SelectiveScan node in them).
pub fn check_custom_opset(model: &Path, bytes: &[u8]) -> Result<(), BackendError> {
    use prost::Message;
    let load_err = |message: String| BackendError::Load {
        path: model.display().to_string(),
        message,
    };
    let opsets =
        ModelOpsets::decode(bytes).map_err(|e| load_err(format!("not an ONNX model: {e}")))?;
    for import in opsets
        .opset_import
        .iter()
        .filter(|o| o.domain == gm_ops::DOMAIN)
    {
        if import.version != gm_ops::OPSET_VERSION {
            return Err(load_err(format!(
                "the model imports operator set \"{}\" version {}; this build implements version {} \
                 (ai.groupmamba::SelectiveScan v{}): export the model with a matching gm-export",
                gm_ops::DOMAIN,
                import.version,
                gm_ops::OPSET_VERSION,
                gm_ops::OPSET_VERSION
            )));
        }
    }
    Ok(())
}

/// A session builder in `rt`'s environment with the `ai.groupmamba` domain registered.
pub fn session_builder(
    rt: &OrtRuntime,
) -> Result<ort::session::builder::SessionBuilder, ort::Error> {
    let builder = Session::builder(rt.environment())?;
    builder
        .with_operators(gm_ops::ort_op::domain()?)
        .map_err(|e| ort::Error::new(e.to_string()))
}

/// How [`OrtBackend::load_with_options`] sets up the session.
#[derive(Debug, Clone, Default)]
pub struct OrtLoadOptions {
    /// Intra-op thread count (ONNX Runtime's default, one per physical core, when `None`).
    pub intra_threads: Option<usize>,
    /// Leave `ai.groupmamba::SelectiveScan` unregistered. ONNX Runtime then inlines the op's
    /// model-local function in a `--scan function` export, and refuses a custom-op export.
    pub without_scan_op: bool,
    /// Write the graph as ONNX Runtime has it after basic (level 1) optimisation, with the
    /// function inlined or the op kept, to this file (the level is then basic, not the default).
    pub optimized_model: Option<PathBuf>,
}

pub struct OrtBackend {
    model: SessionModel,
    runtime: &'static OrtRuntime,
}

impl OrtBackend {
    /// Loads `path` in the process's ONNX Runtime ([`runtime`]).
    pub fn load(path: &Path) -> Result<Self, BackendError> {
        let rt = runtime().map_err(|e| BackendError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::load_in(rt, path)
    }

    /// Loads `path` in `rt`, with ONNX Runtime's default intra-op thread count.
    pub fn load_in(rt: &'static OrtRuntime, path: &Path) -> Result<Self, BackendError> {
        Self::load_with(rt, path, None)
    }

    /// Loads `path` in `rt`; `intra_threads` sets the session's intra-op thread count (ONNX
    /// Runtime's default, one per physical core, when `None`).
    pub fn load_with(
        rt: &'static OrtRuntime,
        path: &Path,
        intra_threads: Option<usize>,
    ) -> Result<Self, BackendError> {
        let options = OrtLoadOptions {
            intra_threads,
            ..OrtLoadOptions::default()
        };
        Self::load_with_options(rt, path, &options)
    }

    /// Loads `path` in `rt` with `options`.
    pub fn load_with_options(
        rt: &'static OrtRuntime,
        path: &Path,
        options: &OrtLoadOptions,
    ) -> Result<Self, BackendError> {
        let load_err = |message: String| BackendError::Load {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| load_err(e.to_string()))?;
        check_custom_opset(path, &bytes)?;
        let builder = if options.without_scan_op {
            Session::builder(rt.environment())
        } else {
            session_builder(rt)
        };
        let session = builder
            .and_then(|b| match options.intra_threads {
                Some(n) => b
                    .with_intra_threads(n)
                    .map_err(|e| ort::Error::new(e.to_string())),
                None => Ok(b),
            })
            .and_then(|b| match &options.optimized_model {
                Some(file) => {
                    let plain = |e: ort::Error<_>| ort::Error::new(e.to_string());
                    let b = b
                        .with_optimization_level(GraphOptimizationLevel::Level1)
                        .map_err(plain)?;
                    b.with_optimized_model_path(file).map_err(plain)
                }
                None => Ok(b),
            })
            .and_then(|mut b| {
                b.commit_from_memory(&bytes)
                    .map_err(|e| ort::Error::new(e.to_string()))
            })
            .map_err(|e| load_err(format!("{} ({})", e, rt.describe())))?;
        Ok(Self {
            model: SessionModel::new(session, path)?,
            runtime: rt,
        })
    }

    /// The ONNX Runtime this backend runs in.
    pub fn runtime(&self) -> &'static OrtRuntime {
        self.runtime
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort-cpu"
    }

    fn input_shape(&self) -> &[InputDim] {
        &self.model.input
    }

    fn output_names(&self) -> &[String] {
        &self.model.outputs
    }

    fn run(&mut self, images: &HostTensor) -> Result<Vec<HostTensor>, BackendError> {
        self.model.run(images)
    }
}

/// A created ONNX Runtime session with what the backends need of it: the CPU and the CUDA backend
/// differ only in how they build the session.
pub(crate) struct SessionModel {
    path: PathBuf,
    session: Session,
    input_name: String,
    /// Declared dims of the session's first (only) input.
    pub(crate) input: Vec<InputDim>,
    pub(crate) outputs: Vec<String>,
}

impl SessionModel {
    /// Reads the session's first input (name and declared dims) and its output names.
    pub(crate) fn new(session: Session, path: &Path) -> Result<Self, BackendError> {
        let (input_name, input, outputs) = session_io(&session, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            session,
            input_name,
            input,
            outputs,
        })
    }

    /// The model file (for messages).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA I/O binding
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The session, for run paths of their own (the CUDA backend's I/O binding).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA I/O binding
    pub(crate) fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Name of the session's (only) input.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA I/O binding
    pub(crate) fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Declared dims of each output (negative = dynamic), in output order.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA I/O binding
    pub(crate) fn output_dims(&self) -> Vec<Vec<i64>> {
        self.session
            .outputs()
            .iter()
            .map(|o| match o.dtype() {
                ValueType::Tensor { shape, .. } => shape.iter().copied().collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Runs the session on host `images` and copies every output back to the host (for the CUDA
    /// EP, ONNX Runtime moves the data to and from the GPU at each run).
    pub(crate) fn run(&mut self, images: &HostTensor) -> Result<Vec<HostTensor>, BackendError> {
        let run_err = |e: ort::Error| BackendError::Run {
            model: self.path.display().to_string(),
            message: e.to_string(),
        };
        let input = TensorRef::from_array_view((images.shape.clone(), images.data.as_slice()))
            .map_err(run_err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(run_err)?;
        let mut result = Vec::with_capacity(outputs.len());
        for (_, value) in outputs.iter() {
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
            result.push(HostTensor {
                shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                data: data.to_vec(),
            });
        }
        Ok(result)
    }
}

/// The session's first input (name and declared dims) and its output names.
fn session_io(
    session: &Session,
    path: &Path,
) -> Result<(String, Vec<InputDim>, Vec<String>), BackendError> {
    let load_err = |message: String| BackendError::Load {
        path: path.display().to_string(),
        message,
    };
    let first = session
        .inputs()
        .first()
        .ok_or_else(|| load_err("the model has no input".into()))?;
    let input_name = first.name().to_string();
    let input = match first.dtype() {
        ValueType::Tensor {
            shape,
            dimension_symbols,
            ..
        } => shape
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if d >= 0 {
                    InputDim::Fixed(d as usize)
                } else {
                    let name = dimension_symbols
                        .get(i)
                        .filter(|s| !s.is_empty())
                        .cloned()
                        .unwrap_or_else(|| "?".into());
                    InputDim::Dynamic(name)
                }
            })
            .collect(),
        other => {
            return Err(load_err(format!(
                "input {input_name} is not a tensor: {other:?}"
            )))
        }
    };
    let outputs = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    Ok((input_name, input, outputs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(minor_of("1.32.0"), Some(32));
        assert_eq!(minor_of("1.19.2"), Some(19));
        assert_eq!(minor_of("2.0.0"), None);
        assert_eq!(minor_of("garbage"), None);
    }

    #[test]
    fn newest_library_is_picked() {
        let dir = std::env::temp_dir().join(format!("gm-ort-pick-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.19.2",
            "libonnxruntime_providers_shared.so",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(
            newest_library_in(&dir).unwrap().file_name().unwrap(),
            "libonnxruntime.so.1.19.2"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
