//! With the `cuda` feature: compiles the CUDA kernels (`cuda/selective_scan.cu`, `cuda/layer_norm.cu`,
//! `cuda/depthwise_conv.cu`) with nvcc into one static library and links it with the static CUDA
//! runtime, so the ops' CUDA kernels travel inside the Rust artifact (no CUDA toolkit needed where
//! it runs, only the driver).
//! Needs no GPU to build.
//!
//! nvcc is taken from `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else the one pip installs
//! (`pip install "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
//! "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"`), else `nvcc` on the PATH. Target GPUs:
//! `$GM_CUDA_ARCHS` (default `90,87`: H100, Jetson Orin).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernels' sources under `cuda/`, each compiled to one object of the library.
const SOURCES: [&str; 3] = ["selective_scan", "layer_norm", "depthwise_conv"];

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed=cuda/{source}.cu");
    }
    // Included by layer_norm.cu and depthwise_conv.cu.
    println!("cargo:rerun-if-changed=cuda/element_io.cuh");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=GM_CUDA_ARCHS");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = find_nvcc().unwrap_or_else(|| {
        panic!(
            "feature `cuda` needs nvcc: set NVCC or CUDA_HOME, or `pip install \"nvidia-cuda-nvcc==13.0.*\" \
             \"nvidia-cuda-runtime==13.0.*\" \"nvidia-cuda-cccl==13.0.*\" \"nvidia-nvvm==13.0.*\" \"nvidia-cuda-crt==13.0.*\"`"
        )
    });
    let toolkit = nvcc
        .parent()
        .and_then(Path::parent)
        .expect("nvcc lives in <toolkit>/bin")
        .to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let archs = std::env::var("GM_CUDA_ARCHS").unwrap_or_else(|_| "90,87".to_string());
    let mut objects = Vec::new();
    for source in SOURCES {
        let object = out.join(format!("{source}.o"));
        let file = format!("cuda/{source}.cu");
        let mut cmd = Command::new(&nvcc);
        cmd.args([
            "-O3",
            "-std=c++17",
            "-Xcompiler",
            "-fPIC",
            "-c",
            &file,
            "-o",
        ])
        .arg(&object)
        .arg(format!("-I{}", toolkit.join("include").display()));
        for arch in archs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            cmd.arg(format!("-gencode=arch=compute_{arch},code=sm_{arch}"));
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {file}");
        objects.push(object);
    }
    let archive = out.join("libgm_scan_cuda.a");
    let _ = std::fs::remove_file(&archive);
    let status = Command::new("ar")
        .arg("rcs")
        .arg(&archive)
        .args(&objects)
        .status()
        .expect("ar");
    assert!(status.success(), "ar failed");

    let cudart = ["lib64", "lib", "lib/x64"]
        .iter()
        .map(|d| toolkit.join(d))
        .find(|d| d.join("libcudart_static.a").exists())
        .unwrap_or_else(|| panic!("libcudart_static.a not found under {}", toolkit.display()));
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=gm_scan_cuda");
    println!("cargo:rustc-link-search=native={}", cudart.display());
    println!("cargo:rustc-link-lib=static=cudart_static");
    for lib in ["stdc++", "dl", "rt", "pthread"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    let pip = Command::new("python3")
        .args(["-c", "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin', 'nvcc'))"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(p) = pip.filter(|p| p.exists()) {
        return Some(p);
    }
    Command::new("nvcc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("nvcc"))
}
