//! `GroupMambaLayer`, the Modulated Group Mamba layer, with its four single-direction `SS2D`s.
//!
//! Official semantics (see the architecture reference, §2.4–2.6):
//! x̂ = LN(x); a = σ(fc2(relu(fc1(mean_L x̂)))); the channels of x̂ are split into four groups,
//! group k runs SS2D with scan direction k (→ ↓ ← ↑); m = concat(y_k) · skip_scale · x̂ · a;
//! out = proj(LN(m)) with the *same* `norm` module applied twice.
//!
//! The four groups are emitted together: per-group weights are stacked on a leading group axis
//! and applied with broadcasting MatMuls, the four depthwise convolutions are one C-channel
//! depthwise convolution, and a single `SelectiveScan` node scans all four groups, each in its own
//! direction, straight from the row-major feature map (no permuted copies).

use gm_ops::dwconv::{Activation, Layout};
use gm_ops::spec::{Direction, DOMAIN, OP_TYPE};

use super::config::{LayerDims, GROUPS};
use super::emit::{Emitter, ScanMode};
use super::params::{Init, Params};
use super::portable_scan::{self, PortableScanInputs, Reorder};
use super::recurrence::Local;
use crate::onnx::{Attr, FloatType, Value};
use crate::tensor::Tensor;

/// LayerNorm eps inside the layer (`attn.norm`, SS2D `out_norm`): plain `nn.LayerNorm`.
const LAYER_NORM_EPS: f32 = 1e-5;
/// Scan direction of group k (0-based): → ↓ ← ↑ (`mamba_g1` … `mamba_g4`).
const DIRECTIONS: [Direction; GROUPS] = [
    Direction::RowMajor,
    Direction::ColumnMajor,
    Direction::RowMajorReversed,
    Direction::ColumnMajorReversed,
];

pub struct GroupMambaLayer {
    pub dims: LayerDims,
}

impl GroupMambaLayer {
    pub fn params(&self, p: &mut Params) {
        let LayerDims {
            channels: c,
            group: d,
            dt_rank: r,
            cam_hidden,
        } = self.dims;
        p.param("skip_scale", &[1], Init::Ones);
        p.linear("fc1", c, cam_hidden, true);
        p.linear("fc2", cam_hidden, c, true);
        p.layer_norm("norm", c);
        for k in 1..=GROUPS {
            p.scoped(&format!("mamba_g{k}"), |p| {
                p.param(
                    "x_proj_weight",
                    &[1, r + 2, d],
                    Init::Uniform(1.0 / (d as f64).sqrt()),
                );
                p.param(
                    "dt_projs_weight",
                    &[1, d, r],
                    Init::Uniform(1.0 / (r as f64).sqrt()),
                );
                p.param("dt_projs_bias", &[1, d], Init::DtBias);
                p.param("A_logs", &[d, 1], Init::Zeros);
                p.param("Ds", &[d], Init::Ones);
                p.layer_norm("out_norm", d);
                p.linear("in_proj", d, 2 * d, false);
                p.conv2d("conv2d", d, d, 3, d, true);
                p.linear("out_proj", d, d, false);
            });
        }
        p.linear("proj", c, c, true);
    }

    /// `x`: tokens (B, L, C) of an `h` × `w` map → tokens (B, L, C).
    pub fn emit(&self, e: &mut Emitter, x: &Value, h: usize, w: usize) -> Value {
        let LayerDims {
            channels: c,
            group: d,
            ..
        } = self.dims;
        let (g, l) = (GROUPS as i64, (h * w) as i64);
        let (ci, di) = (c as i64, d as i64);

        let xn = e.layer_norm(x, "norm", LAYER_NORM_EPS);

        // Channel Affinity Modulation, computed from the normalised input: fc1 of its mean over
        // the tokens. Fused: the mean as a MatMul. On ONNX Runtime's CUDA EP a ReduceMean over the
        // middle axis of (B, L, C) goes to cuDNN's generic reduction (5.6 % of FP16 GPU time at
        // batch 128); a (1, L) row @ x̂ reads x̂ once through cuBLAS (float32 accumulation). The
        // row holds 2^-k with 2^k ≥ L, exact in every float type (1/L is not: rounded to FP16 it
        // would scale every mean by the same error), so the MatMul gives (L / 2^k) · mean, never
        // larger than the mean; the factor 2^k / L goes into fc1's weight, in float32.
        let hidden = if e.fused_ops {
            let tokens = h * w;
            let span = tokens.next_power_of_two();
            let row = Tensor::new(vec![1, tokens], vec![1.0 / span as f32; tokens]);
            let row = e.constant("token_mean_row", &row);
            let scaled_mean = e.g.op("MatMul", &[&row, &xn], &[]);
            let rescale = span as f32 / tokens as f32;
            e.scoped("fc1", |e| {
                let wt = transposed(&e.tensor("weight").scaled(rescale));
                let wt = e.constant("weight_t_rescaled", &wt);
                let y = e.g.op("MatMul", &[&scaled_mean, &wt], &[]);
                let b = e.weight("bias");
                e.add(&y, &b)
            })
        } else {
            let pooled = e.g.op(
                "ReduceMean",
                &[&xn],
                &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))],
            );
            e.linear(&pooled, "fc1")
        };
        let hidden = e.relu(&hidden);
        let affinity = e.linear(&hidden, "fc2");
        let affinity = e.g.op("Sigmoid", &[&affinity], &[]);

        let (xs, z) = self.in_projection(e, &xn, l);

        // Depthwise 3×3 conv of all groups at once; u channels-first (B, C, H, W) for the scan.
        let conv_w = concat(e, |e, k| group(e, k, |e| e.tensor("conv2d.weight").clone()));
        let conv_b = concat(e, |e, k| group(e, k, |e| e.tensor("conv2d.bias").clone()));
        let u = if e.fused_ops {
            // On the (B, H, W, C) view of the tokens; the transpose moves from xs to u.
            let xs = e.reshape(&xs, &[0, h as i64, w as i64, ci]);
            let u = e.depthwise_conv(
                &xs,
                &conv_w,
                &conv_b,
                None,
                Activation::Silu,
                Layout::ChannelsLast,
            );
            e.transpose(&u, &[0, 3, 1, 2])
        } else {
            let xs = e.reshape(&xs, &[0, ci, h as i64, w as i64]);
            let conv_w = e.constant("conv2d_weight", &conv_w);
            let conv_b = e.constant("conv2d_bias", &conv_b);
            let u = e.g.op(
                "Conv",
                &[&xs, &conv_w, &conv_b],
                &[
                    ("kernel_shape", Attr::Ints(vec![3, 3])),
                    ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                    ("group", Attr::Int(ci)),
                ],
            );
            e.silu(&u)
        };
        // u as the portable scan reads it (each group in visiting order), and the projections.
        let (ug, (delta, b_rows, c_rows)) = self.scan_projections(e, &u, h, w);

        let a = concat(e, |e, k| {
            group(e, k, |e| {
                let logs = e.tensor("A_logs");
                Tensor::new(vec![d], logs.data.iter().map(|v| -v.exp()).collect())
            })
        });
        let ds = concat(e, |e, k| group(e, k, |e| e.tensor("Ds").clone()));
        let dt_bias = concat(e, |e, k| {
            group(e, k, |e| e.tensor("dt_projs_bias").flattened())
        });

        // The scans of the four groups, y in row-major spatial order, channels last for out_norm:
        // (B, G, L, d), or (B, L, C) for the fused out_norm.
        let y = match e.scan {
            // `Function` adds the op's model-local function to the model (export.rs); the
            // graph is the custom-op graph.
            ScanMode::CustomOp | ScanMode::Function { .. } => {
                let map = [0, ci, h as i64, w as i64];
                let rows_map = [0, g, h as i64, w as i64];
                let delta = e.reshape(&delta, &map);
                let b_rows = e.reshape(&b_rows, &rows_map);
                let c_rows = e.reshape(&c_rows, &rows_map);
                // The op's per-channel parameters are f32 whatever the activation type.
                let a = e.g.initializer("A", &a, FloatType::F32);
                let ds = e.g.initializer("D", &ds, FloatType::F32);
                let dt_bias = e.g.initializer("delta_bias", &dt_bias, FloatType::F32);
                let y =
                    e.g.node(
                        DOMAIN,
                        OP_TYPE,
                        &[&u, &delta, &a, &b_rows, &c_rows, &ds, &dt_bias],
                        1,
                        &[(
                            "directions",
                            Attr::Ints(DIRECTIONS.map(Direction::as_i64).to_vec()),
                        )],
                    )
                    .remove(0);
                if e.fused_ops {
                    let y = e.reshape(&y, &[0, ci, l]);
                    e.transpose(&y, &[0, 2, 1])
                } else {
                    let y = e.reshape(&y, &[0, g, di, l]);
                    e.transpose(&y, &[0, 1, 3, 2])
                }
            }
            ScanMode::Portable { chunk } => {
                let inputs = PortableScanInputs {
                    u: &ug,
                    delta: &delta,
                    b_rows: &b_rows,
                    c_rows: &c_rows,
                    a: &a,
                    d: &ds,
                    delta_bias: &dt_bias,
                };
                let y = portable_scan::emit_visiting(e, inputs, d, h * w, chunk, Local::Unrolled);
                let y = e.narrow(&y);
                portable_scan::reorder(e, &y, &DIRECTIONS, d, (h, w), Reorder::RowMajorChannelsLast)
            }
        };

        let y = self.out_projection(e, &y, &z, h, w);

        // Gate with skip_scale·x̂, modulate with the channel affinity, shared norm, projection.
        let m = if e.fused_ops {
            // skip_scale is already in y (out_proj's weight).
            let m = e.mul(&y, &xn);
            e.mul(&m, &affinity)
        } else {
            let skip = e.weight("skip_scale");
            let m = e.mul(&y, &skip);
            let m = e.mul(&m, &xn);
            e.mul(&m, &affinity)
        };
        let m = e.layer_norm(&m, "norm", LAYER_NORM_EPS);
        e.linear(&m, "proj")
    }

    /// x_proj → (dt, B, C) rows, then the low-rank dt projection, per group, per position, from
    /// the conv's u (B, C, H, W): u as (B, G, d, L), and delta (B, G, d, L), B and C rows
    /// (B, G, 1, L) (for the portable scan, all four in each group's visiting order, float32).
    fn scan_projections(
        &self,
        e: &mut Emitter,
        u: &Value,
        h: usize,
        w: usize,
    ) -> (Value, (Value, Value, Value)) {
        let LayerDims {
            group: d,
            dt_rank: r,
            ..
        } = self.dims;
        let (g, di, ri, l) = (GROUPS as i64, d as i64, r as i64, (h * w) as i64);
        let ug = e.reshape(u, &[0, g, di, l]);

        // x_proj → (dt, B, C) rows, then the low-rank dt projection, per group, per position.
        // The portable scan works on each group's sequence in visiting order, in float32. The
        // projections are per position, so u is moved into that order and widened before them
        // and they run in float32: dt, B and C come out in the scan's order and type, and only
        // u and y are reordered (in the model's element type) and cast.
        let (ug, proj_float) = match e.scan {
            ScanMode::Portable { .. } => {
                let ug = portable_scan::reorder(e, &ug, &DIRECTIONS, d, (h, w), Reorder::Visiting);
                (e.widen(&ug), FloatType::F32)
            }
            ScanMode::CustomOp | ScanMode::Function { .. } => (ug, e.float),
        };
        let (delta, b_rows, c_rows) = e.with_float(proj_float, |e| {
            let w_x = stack(e, "x_proj_weight", |e, k| {
                group(e, k, |e| squeeze0(e.tensor("x_proj_weight")))
            });
            let x_dbl = e.g.op("MatMul", &[&w_x, &ug], &[]);
            let split = e.g.ints(&[ri, 1, 1]);
            let mut rows =
                e.g.node("", "Split", &[&x_dbl, &split], 3, &[("axis", Attr::Int(2))]);
            let c_rows = rows.pop().unwrap();
            let b_rows = rows.pop().unwrap();
            let dts = rows.pop().unwrap();
            let w_dt = stack(e, "dt_projs_weight", |e, k| {
                group(e, k, |e| squeeze0(e.tensor("dt_projs_weight")))
            });
            let delta = e.g.op("MatMul", &[&w_dt, &dts], &[]);
            (delta, b_rows, c_rows)
        });
        (ug, (delta, b_rows, c_rows))
    }

    /// `in_proj` of every group: the normalised tokens x̂ (B, L, C) → (xs, z) in the layouts
    /// the depthwise conv and `out_projection` take: standard, xs channels-first (B, G, d, L)
    /// for ONNX Conv and SiLU(z) as (B, G, L, d); fused, both tokens (B, L, C) (a channels-last
    /// `DepthwiseConv`, and z for the fused out_norm, which applies the SiLU).
    ///
    /// Standard: one MatMul batched over the groups on (B, G, L, d), then a Split. Fused: two
    /// MatMuls on (B, L, C) with block-diagonal (C, C) weights, one for xs and one for z, so
    /// that neither x̂ nor z is transposed and no Split copies them (four times the multiply-adds
    /// of the batched form: a win on GPUs, where these GEMMs are memory-bound, not on CPUs).
    fn in_projection(&self, e: &mut Emitter, xn: &Value, l: i64) -> (Value, Value) {
        let d = self.dims.group;
        let (g, di) = (GROUPS as i64, d as i64);
        if e.fused_ops {
            // in_proj's rows: [x part; z part], d each.
            let part = |e: &mut Emitter, hint: &str, range: std::ops::Range<usize>| {
                let w = block_diagonal(e, hint, |e, k| {
                    group(e, k, |e| rows(e.tensor("in_proj.weight"), range.clone()))
                });
                e.g.op("MatMul", &[xn, &w], &[])
            };
            let xs = part(e, "in_proj_x_block_diagonal", 0..d);
            let z = part(e, "in_proj_z_block_diagonal", d..2 * d);
            return (xs, z);
        }
        let xg = e.reshape(xn, &[0, l, g, di]);
        let xg = e.transpose(&xg, &[0, 2, 1, 3]);
        let w_in = stack(e, "in_proj_t", |e, k| {
            group(e, k, |e| transposed(e.tensor("in_proj.weight")))
        });
        let xz = e.g.op("MatMul", &[&xg, &w_in], &[]);
        let split = e.g.ints(&[di, di]);
        let mut parts =
            e.g.node("", "Split", &[&xz, &split], 2, &[("axis", Attr::Int(3))]);
        let z = parts.pop().unwrap();
        let xs = parts.pop().unwrap();
        let z = e.silu(&z);
        (e.transpose(&xs, &[0, 1, 3, 2]), z)
    }

    /// out_norm (per group, over d), its affine, the z gate and `out_proj` of every group: the
    /// scans' y and z in `in_projection`'s layout → tokens (B, L, C).
    ///
    /// Standard: LayerNormalization, Mul, Add, Mul and a MatMul batched over the groups on
    /// (B, G, L, d), then a transpose. Fused: one `GroupedLayerNorm` (groups G, SiLU gate) and
    /// one MatMul with the block-diagonal (C, C) weight times skip_scale, all on (B, L, C).
    fn out_projection(&self, e: &mut Emitter, y: &Value, z: &Value, h: usize, w: usize) -> Value {
        let LayerDims {
            channels: c,
            group: d,
            ..
        } = self.dims;
        let (g, l, ci, di) = (GROUPS as i64, (h * w) as i64, c as i64, d as i64);
        if e.fused_ops {
            let scale = concat(e, |e, k| {
                group(e, k, |e| e.tensor("out_norm.weight").clone())
            });
            let bias = concat(e, |e, k| group(e, k, |e| e.tensor("out_norm.bias").clone()));
            let normed = e.grouped_layer_norm(y, &scale, &bias, GROUPS, LAYER_NORM_EPS, Some(z));
            // The layer's skip_scale (a scalar) folded into the weight, in float32: one
            // (B, 1, C) product and its kernel less per layer.
            let skip = e.tensor("skip_scale").data[0];
            let w_out = block_diagonal(e, "out_proj_block_diagonal_skip_scaled", |e, k| {
                group(e, k, |e| e.tensor("out_proj.weight").scaled(skip))
            });
            if e.debug_enabled() {
                // The official mamba_g{k} outputs come before skip_scale: a side branch.
                let w_plain = block_diagonal(e, "out_proj_block_diagonal", |e, k| {
                    group(e, k, |e| e.tensor("out_proj.weight").clone())
                });
                let plain = e.g.op("MatMul", &[&normed, &w_plain], &[]);
                let grouped = e.reshape(&plain, &[0, l, g, di]);
                let grouped = e.transpose(&grouped, &[0, 2, 1, 3]);
                self.debug_groups(e, &grouped, h, w);
            }
            return e.g.op("MatMul", &[&normed, &w_out], &[]);
        }
        let ones = e.constant("out_norm_unit_scale", &Tensor::new(vec![d], vec![1.0; d]));
        let y = e.g.op(
            "LayerNormalization",
            &[y, &ones],
            &[
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(LAYER_NORM_EPS)),
            ],
        );
        let norm_w = stack(e, "out_norm_weight", |e, k| {
            group(e, k, |e| row(e.tensor("out_norm.weight")))
        });
        let norm_b = stack(e, "out_norm_bias", |e, k| {
            group(e, k, |e| row(e.tensor("out_norm.bias")))
        });
        let y = e.mul(&y, &norm_w);
        let y = e.add(&y, &norm_b);
        let y = e.mul(&y, z);
        let w_out = stack(e, "out_proj_t", |e, k| {
            group(e, k, |e| transposed(e.tensor("out_proj.weight")))
        });
        let y = e.g.op("MatMul", &[&y, &w_out], &[]);
        if e.debug_enabled() {
            self.debug_groups(e, &y, h, w);
        }
        let y = e.transpose(&y, &[0, 2, 1, 3]);
        e.reshape(&y, &[0, l, ci])
    }

    /// Each group's SS2D output from `y` (B, G, L, d) as a debug output, as the official
    /// `mamba_g{k}` module returns it (B, H, W, d).
    fn debug_groups(&self, e: &mut Emitter, y: &Value, h: usize, w: usize) {
        let d = self.dims.group;
        for k in 0..GROUPS {
            let name = format!("{}.mamba_g{}", e.path(), k + 1);
            let idx = e.g.ints(&[k as i64]);
            let yk = e.g.op("Gather", &[y, &idx], &[("axis", Attr::Int(1))]);
            let yk = e.reshape(&yk, &[0, h as i64, w as i64, d as i64]);
            e.debug_output(&yk, &name, &[h, w, d]);
        }
    }
}

/// Reads tensors of group k (`mamba_g{k+1}`).
fn group(e: &mut Emitter, k: usize, f: impl FnOnce(&mut Emitter) -> Tensor) -> Tensor {
    e.scoped(&format!("mamba_g{}", k + 1), f)
}

/// Stacks the four groups' tensors on a new leading axis and adds the result as an initializer.
fn stack(e: &mut Emitter, hint: &str, mut f: impl FnMut(&mut Emitter, usize) -> Tensor) -> Value {
    let parts: Vec<Tensor> = (0..GROUPS).map(|k| f(e, k)).collect();
    let mut shape = vec![GROUPS];
    shape.extend_from_slice(&parts[0].shape);
    let data = parts.into_iter().flat_map(|t| t.data).collect();
    let t = Tensor::new(shape, data);
    e.constant(hint, &t)
}

/// The (G·in, G·out) block-diagonal matrix of the four groups' `nn.Linear` weights (each
/// (out, in), so block k is weight_kᵀ), as an initializer: x (…, G·in) @ it applies group k's
/// Linear to channels [k·in, (k+1)·in) and writes channels [k·out, (k+1)·out).
fn block_diagonal(
    e: &mut Emitter,
    hint: &str,
    mut f: impl FnMut(&mut Emitter, usize) -> Tensor,
) -> Value {
    let weights: Vec<Tensor> = (0..GROUPS).map(|k| f(e, k)).collect();
    let (outs, ins) = (weights[0].shape[0], weights[0].shape[1]);
    let (height, width) = (GROUPS * ins, GROUPS * outs);
    let mut data = vec![0.0f32; height * width];
    for (k, weight) in weights.iter().enumerate() {
        for o in 0..outs {
            for i in 0..ins {
                data[(k * ins + i) * width + k * outs + o] = weight.data[o * ins + i];
            }
        }
    }
    e.constant(hint, &Tensor::new(vec![height, width], data))
}

/// Rows `range` of a 2-D tensor (a part of a Linear's outputs).
fn rows(t: &Tensor, range: std::ops::Range<usize>) -> Tensor {
    let cols = t.shape[1];
    let data = t.data[range.start * cols..range.end * cols].to_vec();
    Tensor::new(vec![range.len(), cols], data)
}

/// Concatenates the four groups' tensors along their first axis (channels).
fn concat(e: &mut Emitter, mut f: impl FnMut(&mut Emitter, usize) -> Tensor) -> Tensor {
    let parts: Vec<Tensor> = (0..GROUPS).map(|k| f(e, k)).collect();
    let mut shape = parts[0].shape.clone();
    shape[0] *= GROUPS;
    Tensor::new(shape, parts.into_iter().flat_map(|t| t.data).collect())
}

fn transposed(t: &Tensor) -> Tensor {
    super::emit::transpose2(t)
}

/// (1, a, b) → (a, b).
fn squeeze0(t: &Tensor) -> Tensor {
    Tensor::new(t.shape[1..].to_vec(), t.data.clone())
}

/// (d,) → (1, d), to broadcast over the tokens of a group.
fn row(t: &Tensor) -> Tensor {
    Tensor::new(vec![1, t.numel()], t.data.clone())
}
