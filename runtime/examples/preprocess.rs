//! Runs gm-run's image preprocessing alone and writes each input tensor as `.npy`, so that
//! `scripts/preprocess_parity.py` can compare it with PIL + torchvision without a model.
//!
//! `cargo run -p gm-runtime --example preprocess -- --resize 256 --crop 224x224 --out DIR FILE…`
//! writes `DIR/<file name>.npy` (`[1, 3, H, W]` float32) per image; a file that fails is reported
//! on stderr and makes the exit status 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gm_runtime::image::{load, DecodeLimits, Preprocessing};
use gm_runtime::npy;

fn usage() -> ExitCode {
    eprintln!("usage: preprocess --resize N --crop HxW --out DIR FILE...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut resize, mut crop, mut out, mut files) = (None, None, None, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--resize" => resize = args.next().and_then(|v| v.parse::<usize>().ok()),
            "--crop" => {
                crop = args.next().and_then(|v| {
                    let (h, w) = v.split_once('x')?;
                    Some([h.parse().ok()?, w.parse().ok()?])
                })
            }
            "--out" => out = args.next().map(PathBuf::from),
            _ => files.push(PathBuf::from(a)),
        }
    }
    let (Some(resize), Some(crop), Some(out)) = (resize, crop, out) else {
        return usage();
    };
    let p = Preprocessing {
        resize_shorter_side: resize,
        ..Preprocessing::official(crop)
    };
    let mut failed = false;
    for file in &files {
        let name = Path::new(file).file_name().unwrap_or_default();
        let dest = out.join(format!("{}.npy", name.to_string_lossy()));
        let result = load(file, &p, &DecodeLimits::default())
            .map_err(|e| e.to_string())
            .and_then(|t| {
                npy::write_f32(&dest, &[1, 3, crop[0], crop[1]], &t).map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            eprintln!("preprocess: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
