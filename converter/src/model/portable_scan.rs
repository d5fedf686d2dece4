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
//! (per export size), no `Loop`/`Scan`. As in the op, everything is float32 (an FP16 export
//! casts the scan's inputs up and its output down).
//!
//! Scan directions are per-group permutations of the sequence axis (`Gather` with constant
//! indices, skipped for the identity), undone after the scan.
//!
//! The chunk-level building blocks ([`ChunkLevel`], [`within_chunks`]) write through
//! [`OpSink`]; the model-local function of `--scan function` (`function_scan`) builds its body,
//! where the length is only known at run time, from the same blocks.

use gm_ops::spec::Direction;

use super::emit::Emitter;
use crate::onnx::proto::DataType;
use crate::onnx::{Attr, FloatType, OpSink, Value};
use crate::tensor::Tensor;

/// Above this, softplus(x) = x (the official kernel's threshold).
pub(super) const SOFTPLUS_THRESHOLD: f32 = 20.0;

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
    // The scan runs in float32 whatever the model's element type (as the op does: state and
    // arithmetic f32, y rounded once): FP16 inputs are widened here and y narrowed at the end.
    let model_float = e.float;
    let widen = |e: &mut Emitter, v: &Value| match model_float {
        FloatType::F32 => v.clone(),
        FloatType::F16 => {
            e.g.op("Cast", &[v], &[("to", Attr::Int(DataType::Float as i64))])
        }
    };
    let (u, delta) = (widen(e, inputs.u), widen(e, inputs.delta));
    let (b_rows, c_rows) = (widen(e, inputs.b_rows), widen(e, inputs.c_rows));
    e.float = FloatType::F32;
    let y = emit_f32(
        e,
        (&u, &delta, &b_rows, &c_rows),
        &inputs,
        directions,
        width,
        (h, w),
        chunk,
    );
    e.float = model_float;
    match model_float {
        FloatType::F32 => y,
        FloatType::F16 => e.g.op(
            "Cast",
            &[&y],
            &[("to", Attr::Int(DataType::Float16 as i64))],
        ),
    }
}

/// [`emit`] with f32 activations `(u, delta, b_rows, c_rows)` and the emitter in f32.
fn emit_f32(
    e: &mut Emitter,
    (u, delta, b_rows, c_rows): (&Value, &Value, &Value, &Value),
    inputs: &PortableScanInputs<'_>,
    directions: &[Direction],
    width: usize,
    (h, w): (usize, usize),
    chunk: usize,
) -> Value {
    let groups = directions.len();
    let per_channel = |t: &Tensor| Tensor::new(vec![groups, width, 1], t.data.clone());
    let a = e.constant("A", &per_channel(inputs.a));
    let d = e.constant("D", &per_channel(inputs.d));
    let bias = e.constant("delta_bias", &per_channel(inputs.delta_bias));

    let x = e.add(delta, &bias);
    let threshold = e.scalar(SOFTPLUS_THRESHOLD);
    let large = e.g.op("Greater", &[&x, &threshold], &[]);
    let soft = e.g.op("Softplus", &[&x], &[]);
    let dt = e.g.op("Where", &[&large, &x, &soft], &[]);
    let log_a = e.mul(&dt, &a);
    let b = e.mul(&dt, b_rows);
    let b = e.mul(&b, u);

    let perms: Vec<Vec<usize>> = directions
        .iter()
        .map(|dir| dir.visiting_order(h, w))
        .collect();
    let log_a = permute(e, &log_a, &perms, false);
    let b = permute(e, &b, &perms, false);
    let states = chunked(e, &log_a, &b, h * w, chunk);
    let states = permute(e, &states, &perms, true);

    let y = e.mul(c_rows, &states);
    let skip = e.mul(&d, u);
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
/// of length `n` (known at export) of rank-4 tensors (B, G, d, n).
fn chunked<S: OpSink>(s: &mut S, log_a: &Value, b: &Value, n: usize, chunk: usize) -> Value {
    if n <= chunk {
        let mask = s.float_tensor(&format!("causal_mask_{n}"), &causal_mask(n));
        return within_chunks(s, log_a, b, &mask).0;
    }
    let k = n.div_ceil(chunk);
    let padded = k * chunk;
    let (log_a, b) = if padded > n {
        let pads = s.ints(&[0, 0, 0, 0, 0, 0, 0, (padded - n) as i64]);
        pad_end(s, log_a, b, &pads)
    } else {
        (log_a.clone(), b.clone())
    };
    let level = ChunkLevel::solve(s, &log_a, &b, chunk);
    let ends = chunked(s, &level.chunk_log_a, &level.chunk_b, k, chunk);
    let states = level.carry(s, &ends);
    if padded == n {
        return states;
    }
    let starts = s.ints(&[0]);
    let stop = s.ints(&[n as i64]);
    let axes = s.ints(&[3]);
    s.op("Slice", &[&states, &starts, &stop, &axes], &[])
}

// ---- building blocks shared with the model-local function's body (`function_scan`) ------------

/// Appends padding steps (a = 1, b = 0: they leave the state unchanged) at the end of the last
/// axis of rank-4 `log_a` and `b`; `pads` is Pad's 8-element `pads` input.
pub(super) fn pad_end<S: OpSink>(
    s: &mut S,
    log_a: &Value,
    b: &Value,
    pads: &Value,
) -> (Value, Value) {
    (
        s.op("Pad", &[log_a, pads], &[]),
        s.op("Pad", &[b, pads], &[]),
    )
}

/// One level of the chunked closed form over the last axis of rank-4 (B, G, d, n) tensors whose
/// length n is a multiple of the chunk length T.
pub(super) struct ChunkLevel {
    /// (B, G, d, K, T): zero-initial-state solution inside each of the K chunks.
    local: Value,
    /// (B, G, d, K, T): cumulative sums of log_a inside each chunk.
    cumsum: Value,
    /// (B, G, d, K): each chunk as one step of a recurrence over chunks: its decay exp(S_last)
    /// (as a log) ...
    pub chunk_log_a: Value,
    /// ... and its input, the chunk's final local state. The states of that recurrence are the
    /// chunk end states.
    pub chunk_b: Value,
}

impl ChunkLevel {
    pub(super) fn solve<S: OpSink>(s: &mut S, log_a: &Value, b: &Value, t: usize) -> Self {
        let t_i = t as i64;
        let log_a = s.reshape_to(log_a, &[0, 0, 0, -1, t_i]);
        let b = s.reshape_to(b, &[0, 0, 0, -1, t_i]);
        let mask = s.float_tensor(&format!("causal_mask_{t}"), &causal_mask(t));
        let (local, cumsum) = within_chunks(s, &log_a, &b, &mask);
        let last = s.int_scalar(t_i - 1);
        let chunk_log_a = s.op("Gather", &[&cumsum, &last], &[("axis", Attr::Int(4))]);
        let chunk_b = s.op("Gather", &[&local, &last], &[("axis", Attr::Int(4))]);
        Self {
            local,
            cumsum,
            chunk_log_a,
            chunk_b,
        }
    }

    /// The states (B, G, d, K·T), given the chunk end states `ends` (B, G, d, K): the state
    /// entering chunk k is the end state of chunk k − 1 (zero for the first), decayed by
    /// exp(S_i) inside the chunk.
    pub(super) fn carry<S: OpSink>(&self, s: &mut S, ends: &Value) -> Value {
        // Shift right by one along K: pad a zero in front, drop the last (no empty tensors).
        let pads = s.ints(&[0, 0, 0, 1, 0, 0, 0, 0]);
        let shifted = s.op("Pad", &[ends, &pads], &[]);
        let starts = s.ints(&[0]);
        let stop = s.ints(&[-1]);
        let axes = s.ints(&[3]);
        let incoming = s.op("Slice", &[&shifted, &starts, &stop, &axes], &[]);
        let last_axis = s.ints(&[-1]);
        let incoming = s.op("Unsqueeze", &[&incoming, &last_axis], &[]);
        let decay = s.op("Exp", &[&self.cumsum], &[]);
        let carried = s.op("Mul", &[&decay, &incoming], &[]);
        let states = s.op("Add", &[&self.local, &carried], &[]);
        s.reshape_to(&states, &[0, 0, 0, -1])
    }
}

/// Zero-initial-state solution along the last axis (length t), and the cumulative sums S of
/// log_a: h_i = Σ_{j ≤ i} exp(S_i − S_j)·b_j. `mask` is t×t: 0 on and below the diagonal, −∞
/// above (added before `Exp`, so no exponent is ever positive).
pub(super) fn within_chunks<S: OpSink>(
    s: &mut S,
    log_a: &Value,
    b: &Value,
    mask: &Value,
) -> (Value, Value) {
    let axis = s.int_scalar(-1);
    let cumsum = s.op("CumSum", &[log_a, &axis], &[]);
    let last_axis = s.ints(&[-1]);
    let row_axis = s.ints(&[-2]);
    let s_i = s.op("Unsqueeze", &[&cumsum, &last_axis], &[]);
    let s_j = s.op("Unsqueeze", &[&cumsum, &row_axis], &[]);
    let diff = s.op("Sub", &[&s_i, &s_j], &[]);
    let diff = s.op("Add", &[&diff, mask], &[]);
    let decay = s.op("Exp", &[&diff], &[]);
    let b = s.op("Unsqueeze", &[b, &last_axis], &[]);
    let h = s.op("MatMul", &[&decay, &b], &[]);
    let h = s.op("Squeeze", &[&h, &last_axis], &[]);
    (h, cumsum)
}

/// T×T: 0 on and below the diagonal, −∞ above (exp → 0: no future step contributes).
pub(super) fn causal_mask(t: usize) -> Tensor {
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
