//! The selective scan from standard ONNX operators only (`--scan portable`), for runtimes that
//! cannot load the `ai.groupmamba::SelectiveScan` op.
//!
//! With d_state = 1 each channel's scan is a scalar first-order linear recurrence
//! h_t = a_t·h_{t−1} + b_t, a_t = exp(ℓ_t), ℓ_t = Δ_t·A ≤ 0, b_t = Δ_t·B_t·u_t. Its exact chunked
//! closed form: cut the sequence into chunks of T steps; inside a chunk, with S_i the cumulative
//! sum of ℓ from the chunk start,
//!     h_i = Σ_{j ≤ i} exp(S_i − S_j)·b_j  +  exp(S_i)·h_in,
//! i.e. a masked lower-triangular T×T decay matrix times b, plus the incoming state. The incoming
//! states are themselves a scalar linear recurrence over chunks (a = exp(S_{T−1}), b = the
//! chunk's final local state), solved by the same construction one level up, until one chunk
//! remains. Every exponent is a difference of cumulative sums inside one chunk (≤ 0 on and below
//! the diagonal; the upper triangle is masked with −∞ before `Exp`), so nothing overflows
//! whatever the sequence length — unlike exp of a global cumulative sum. Shapes are static
//! (per export size), no `Loop`/`Scan`.
//!
//! Scan directions are per-group permutations of the sequence axis (`Gather` with constant
//! indices, skipped for the identity), undone after the scan.

use gm_ops::spec::Direction;

use super::emit::Emitter;
use crate::onnx::{Attr, Value};
use crate::tensor::Tensor;

/// Above this, softplus(x) = x (the official kernel's threshold).
const SOFTPLUS_THRESHOLD: f32 = 20.0;

/// Inputs of one layer's scans, all groups at once, in the layer's grouped layout.
pub struct PortableScanInputs<'a> {
    /// (B, G, d, L)
    pub u: &'a Value,
    /// (B, G, d, L), before bias and softplus.
    pub delta: &'a Value,
    /// (B, G, 1, L)
    pub b_rows: &'a Value,
    /// (B, G, 1, L)
    pub c_rows: &'a Value,
    /// Per-channel parameters, (C,) each, channel c = g·d + i.
    pub a: &'a Tensor,
    pub d: &'a Tensor,
    pub delta_bias: &'a Tensor,
}

/// Emits the scans of `groups` groups of `width` channels over an `h` × `w` map; returns y as
/// (B, G, d, L) in row-major spatial order.
pub fn emit(
    e: &mut Emitter,
    inputs: PortableScanInputs<'_>,
    directions: &[Direction],
    width: usize,
    (h, w): (usize, usize),
    chunk: usize,
) -> Value {
    let groups = directions.len();
    let per_channel = |t: &Tensor| Tensor::new(vec![groups, width, 1], t.data.clone());
    // Per-channel parameters keep f32 only where the activations are f32: they meet the
    // activations in elementwise ops, which need one type.
    let a = e.constant("A", &per_channel(inputs.a));
    let d = e.constant("D", &per_channel(inputs.d));
    let bias = e.constant("delta_bias", &per_channel(inputs.delta_bias));

    let x = e.add(inputs.delta, &bias);
    let threshold = e.scalar(SOFTPLUS_THRESHOLD);
    let large = e.g.op("Greater", &[&x, &threshold], &[]);
    let soft = e.g.op("Softplus", &[&x], &[]);
    let dt = e.g.op("Where", &[&large, &x, &soft], &[]);
    let log_a = e.mul(&dt, &a);
    let b = e.mul(&dt, inputs.b_rows);
    let b = e.mul(&b, inputs.u);

    let perms: Vec<Vec<usize>> = directions
        .iter()
        .map(|dir| dir.visiting_order(h, w))
        .collect();
    let log_a = permute(e, &log_a, &perms, false);
    let b = permute(e, &b, &perms, false);
    let states = chunked(e, &log_a, &b, h * w, chunk);
    let states = permute(e, &states, &perms, true);

    let y = e.mul(inputs.c_rows, &states);
    let skip = e.mul(&d, inputs.u);
    e.add(&y, &skip)
}

/// Reorders the last axis of (B, G, d, L) group by group: into visiting order, or (`inverse`)
/// back to row-major order. Groups scanned in row-major order are left alone.
fn permute(e: &mut Emitter, x: &Value, perms: &[Vec<usize>], inverse: bool) -> Value {
    let is_identity = |p: &[usize]| p.iter().enumerate().all(|(i, &v)| i == v);
    if perms.iter().all(|p| is_identity(p)) {
        return x.clone();
    }
    let parts = if perms.len() == 1 {
        vec![x.clone()]
    } else {
        e.g.node("", "Split", &[x], perms.len(), &[("axis", Attr::Int(1))])
    };
    let permuted: Vec<Value> = parts
        .iter()
        .zip(perms)
        .map(|(part, perm)| {
            if is_identity(perm) {
                return part.clone();
            }
            let index: Vec<i64> = if inverse {
                let mut inv = vec![0i64; perm.len()];
                for (s, &p) in perm.iter().enumerate() {
                    inv[p] = s as i64;
                }
                inv
            } else {
                perm.iter().map(|&p| p as i64).collect()
            };
            let index = e.g.ints(&index);
            e.g.op("Gather", &[part, &index], &[("axis", Attr::Int(3))])
        })
        .collect();
    if permuted.len() == 1 {
        return permuted.into_iter().next().unwrap();
    }
    let refs: Vec<&Value> = permuted.iter().collect();
    e.g.op("Concat", &refs, &[("axis", Attr::Int(1))])
}

/// States h of the recurrence h_t = exp(log_a_t)·h_{t−1} + b_t, h_{−1} = 0, along the last axis
/// of length `n` of rank-4 tensors (B, G, d, n).
fn chunked(e: &mut Emitter, log_a: &Value, b: &Value, n: usize, chunk: usize) -> Value {
    if n <= chunk {
        return within_chunks(e, log_a, b, n).0;
    }
    let k = n.div_ceil(chunk);
    let padded = k * chunk;
    let (log_a, b) = if padded > n {
        // Padding steps have a = 1, b = 0: they leave the state unchanged.
        let pads = e.g.ints(&[0, 0, 0, 0, 0, 0, 0, (padded - n) as i64]);
        (
            e.g.op("Pad", &[log_a, &pads], &[]),
            e.g.op("Pad", &[b, &pads], &[]),
        )
    } else {
        (log_a.clone(), b.clone())
    };
    let (k_i, t_i) = (k as i64, chunk as i64);
    let log_a = e.reshape(&log_a, &[0, 0, 0, k_i, t_i]);
    let b = e.reshape(&b, &[0, 0, 0, k_i, t_i]);
    let (local, cumsum) = within_chunks(e, &log_a, &b, chunk);

    // Each chunk as one step of a recurrence over chunks: decay exp(S_last), input = the chunk's
    // final local state. Its states are the chunk end states.
    let last = |e: &mut Emitter, x: &Value| {
        let starts = e.g.ints(&[t_i - 1]);
        let ends = e.g.ints(&[t_i]);
        let axes = e.g.ints(&[4]);
        let x = e.g.op("Slice", &[x, &starts, &ends, &axes], &[]);
        e.reshape(&x, &[0, 0, 0, k_i])
    };
    let chunk_log_a = last(e, &cumsum);
    let chunk_b = last(e, &local);
    let ends = chunked(e, &chunk_log_a, &chunk_b, k, chunk);

    // State entering chunk k = end state of chunk k − 1 (zero for the first).
    let starts = e.g.ints(&[0]);
    let stop = e.g.ints(&[k_i - 1]);
    let axes = e.g.ints(&[3]);
    let previous = e.g.op("Slice", &[&ends, &starts, &stop, &axes], &[]);
    let pads = e.g.ints(&[0, 0, 0, 1, 0, 0, 0, 0]);
    let incoming = e.g.op("Pad", &[&previous, &pads], &[]);
    let incoming = e.reshape(&incoming, &[0, 0, 0, k_i, 1]);
    let decay = e.g.op("Exp", &[&cumsum], &[]);
    let carried = e.mul(&decay, &incoming);
    let states = e.add(&local, &carried);
    let states = e.reshape(&states, &[0, 0, 0, padded as i64]);
    if padded == n {
        return states;
    }
    let starts = e.g.ints(&[0]);
    let stop = e.g.ints(&[n as i64]);
    let axes = e.g.ints(&[3]);
    e.g.op("Slice", &[&states, &starts, &stop, &axes], &[])
}

/// Zero-initial-state solution inside chunks of length `t` (the last axis), and the cumulative
/// sums S of log_a: h_i = Σ_{j ≤ i} exp(S_i − S_j)·b_j.
fn within_chunks(e: &mut Emitter, log_a: &Value, b: &Value, t: usize) -> (Value, Value) {
    let axis = e.g.int_scalar(-1);
    let cumsum = e.g.op("CumSum", &[log_a, &axis], &[]);
    let last_axis = e.g.ints(&[-1]);
    let row_axis = e.g.ints(&[-2]);
    let s_i = e.g.op("Unsqueeze", &[&cumsum, &last_axis], &[]);
    let s_j = e.g.op("Unsqueeze", &[&cumsum, &row_axis], &[]);
    let diff = e.g.op("Sub", &[&s_i, &s_j], &[]);
    let mask = causal_mask(t);
    let mask = e.constant(&format!("causal_mask_{t}"), &mask);
    let diff = e.add(&diff, &mask);
    let decay = e.g.op("Exp", &[&diff], &[]);
    let b = e.g.op("Unsqueeze", &[b, &last_axis], &[]);
    let h = e.g.op("MatMul", &[&decay, &b], &[]);
    let h = e.g.op("Squeeze", &[&h, &last_axis], &[]);
    (h, cumsum)
}

/// T×T: 0 on and below the diagonal, −∞ above (exp → 0: no future step contributes).
fn causal_mask(t: usize) -> Tensor {
    let data = (0..t * t)
        .map(|k| {
            if k % t <= k / t {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    Tensor::new(vec![t, t], data)
}
