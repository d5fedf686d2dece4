//! Runs the Rust CPU SelectiveScan kernel on `.npy` inputs: the reference that GPU kernels are
//! checked against (scripts/gpu/scan_check.py).
//!
//! Usage: scan_reference DIR — reads DIR/{u,delta,A,B,C,D,delta_bias,directions}.npy
//! (float32; layout as in plugins/SPEC.md; `directions` holds the G direction codes) and writes
//! DIR/y_ref.npy.

use std::path::PathBuf;

use anyhow::{Context, Result};
use gm_ops::{selective_scan_to_vec, Direction, ScanInputs, ScanShape};
use gm_runtime::npy::{read_f32, write_f32};

fn main() -> Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: scan_reference DIR")?,
    );
    let load = |name: &str| read_f32(dir.join(format!("{name}.npy")));
    let (u_shape, u) = load("u")?;
    let (_, delta) = load("delta")?;
    let (_, a) = load("A")?;
    let (b_shape, b) = load("B")?;
    let (_, c) = load("C")?;
    let (_, d) = load("D")?;
    let (_, delta_bias) = load("delta_bias")?;
    let (_, dirs) = load("directions")?;
    let directions = Direction::parse_list(&dirs.iter().map(|&v| v as i64).collect::<Vec<_>>())?;
    let shape = ScanShape {
        batch: u_shape[0],
        channels: u_shape[1],
        groups: b_shape[1],
        height: u_shape[2],
        width: u_shape[3],
    };
    let inputs = ScanInputs {
        u: &u,
        delta: &delta,
        a: &a,
        b: &b,
        c: &c,
        d: &d,
        delta_bias: &delta_bias,
    };
    let y = selective_scan_to_vec(&shape, &directions, inputs)?;
    write_f32(dir.join("y_ref.npy"), &u_shape, &y)?;
    Ok(())
}
