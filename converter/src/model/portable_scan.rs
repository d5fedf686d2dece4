//! The selective scan from standard ONNX operators only (`--scan portable`), for runtimes that
//! cannot load the `ai.groupmamba::SelectiveScan` op.
//!
//! With d_state = 1 each channel's scan is a scalar first-order linear recurrence
//! h_t = a_t·h_{t−1} + b_t, a_t = exp(ℓ_t), ℓ_t = Δ_t·A ≤ 0, b_t = Δ_t·B_t·u_t. Its exact chunked
//! closed form: cut the sequence into chunks of T steps; inside a chunk, with S_i the cumulative
//! sum of ℓ from the chunk start,
//!     h_i = Σ_{j ≤ i} exp(S_i − S_j)·b_j  +  exp(S_i)·h_in.
//! The first term, the chunk's zero-initial-state solution, is computed in one of two ways
//! (`Local`): on the first level, which holds all L steps, as the recurrence itself unrolled
//! over the T steps of every chunk at once (`Split` into T slices, one `Mul` and one `Add` per
//! step, `Concat`): a few operations per element, for ~2T nodes; on the levels above (L/T steps
//! and fewer) as the masked T×T decay-matrix product written above: ~T exponentials and products
//! per element, for a handful of nodes. (Unrolling every level made ONNX Runtime no faster on CPU
//! and tract's model preparation 1.4× slower.) The incoming states are themselves a scalar linear
//! recurrence over chunks (a = exp(S_{T−1}), b = the chunk's final local state), solved by the
//! same construction one level up, until one chunk remains; each level hands the level below the
//! states *entering* its chunks (the top level's closed form gives them directly, with an
//! exclusive sum). Chunk lengths divide their level where they can (`chunk_length`: tiny's
//! 196 = 14 chunks of 14, 49 = 7 of 7), so no padding steps are computed. Every factor is an a_t = exp(ℓ_t) ≤ 1,
//! an exp(S_i) ≤ 1 of a cumulative sum inside one chunk, or an exp(S_i − S_j) ≤ 1 (the upper
//! triangle is masked with −∞ before `Exp`), so nothing overflows whatever the sequence length —
//! unlike exp of a global cumulative sum. Shapes are static (per export size), no `Loop`/`Scan`.
//! As in the op, everything is float32 (in an FP16 export the layer widens u once and runs the
//! projections that make Δ, B and C in float32; y is narrowed once).
//!
//! Scan directions are per-group reorderings of the sequence axis into visiting order, undone
//! after the scan. Each reorder is one `Gather` over the flattened (G, d, L) axes with a constant
//! int32 index (`Direction::visiting_order`, shared by the layers of a stage), so any mix of
//! directions costs one kernel; the way back also swaps the last two axes into the (B, G, L, d)
//! layout the layer's out_norm reads ([`Reorder::RowMajorChannelsLast`]). The layer reorders its map
//! u before the per-position projections that make Δ, B and C ([`reorder`],
//! [`emit_visiting`]): two reorders per layer, in the model's element type.
//!
//! The chunk-level building blocks (`ChunkLevel`, `unrolled`, `closed_form`) write through
//! [`OpSink`]; the model-local function of `--scan function` (`function_scan`) builds its body,
//! where the length is only known at run time, from the same blocks.

use gm_ops::spec::Direction;

use super::emit::Emitter;
use crate::onnx::proto::DataType;
use crate::onnx::{Attr, FloatType, OpSink, Value};
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
/// (B, G, d, L) in row-major spatial order and the model's element type. Inputs in row-major order
/// and the model's element type: they are moved into each group's visiting order (in that type),
/// widened to float32, scanned by [`emit_visiting`], and y is narrowed and moved back. (The layer
/// moves its map before the per-position projections instead, so that only u and y are reordered,
/// and runs those projections in float32, so that only u is widened.)
pub fn emit(
    e: &mut Emitter,
    inputs: PortableScanInputs<'_>,
    directions: &[Direction],
    width: usize,
    (h, w): (usize, usize),
    chunk: usize,
    local: Local,
) -> Value {
    let visit = |e: &mut Emitter, x: &Value, width| {
        let x = reorder(e, x, directions, width, (h, w), Reorder::Visiting);
        widen(e, &x)
    };
    let (u, delta) = (visit(e, inputs.u, width), visit(e, inputs.delta, width));
    let (b_rows, c_rows) = (visit(e, inputs.b_rows, 1), visit(e, inputs.c_rows, 1));
    let visiting = PortableScanInputs {
        u: &u,
        delta: &delta,
        b_rows: &b_rows,
        c_rows: &c_rows,
        ..inputs
    };
    let y = emit_visiting(e, visiting, width, h * w, chunk, local);
    let y = narrow(e, &y);
    reorder(e, &y, directions, width, (h, w), Reorder::RowMajor)
}

/// The scans of sequences already in visiting order (every input's last axis, of length `len`,
/// is the step index). Inputs and y (B, G, d, len) are float32 whatever the model's element type:
/// as in the op, the state and all arithmetic are float32 and y is rounded once, by the caller
/// ([`narrow`]). `local` solves the chunks of the full-length level (the levels above use the
/// closed form).
pub fn emit_visiting(
    e: &mut Emitter,
    inputs: PortableScanInputs<'_>,
    width: usize,
    len: usize,
    chunk: usize,
    local: Local,
) -> Value {
    e.with_float(FloatType::F32, |e| {
        let groups = inputs.a.numel() / width;
        let per_channel = |t: &Tensor| Tensor::new(vec![groups, width, 1], t.data.clone());
        let a = e.constant("A", &per_channel(inputs.a));
        let d = e.constant("D", &per_channel(inputs.d));
        let bias = e.constant("delta_bias", &per_channel(inputs.delta_bias));

        let x = e.add(inputs.delta, &bias);
        let dt = softplus(e, &x);
        let log_a = e.mul(&dt, &a);
        let b = e.mul(&dt, inputs.b_rows);
        let b = e.mul(&b, inputs.u);
        let states = chunked(e, &log_a, &b, len, chunk, local, States::After);
        let y = e.mul(inputs.c_rows, &states);
        let skip = e.mul(&d, inputs.u);
        e.add(&y, &skip)
    })
}

/// `x` in float32, the scan's arithmetic type: a `Cast` in an FP16 model, `x` itself in FP32.
pub fn widen(e: &mut Emitter, x: &Value) -> Value {
    match e.float {
        FloatType::F32 => x.clone(),
        FloatType::F16 => {
            e.g.op("Cast", &[x], &[("to", Attr::Int(DataType::Float as i64))])
        }
    }
}

/// Float32 `x` in the model's element type: y's one rounding in an FP16 model.
pub fn narrow(e: &mut Emitter, x: &Value) -> Value {
    match e.float {
        FloatType::F32 => x.clone(),
        FloatType::F16 => {
            e.g.op("Cast", &[x], &[("to", Attr::Int(DataType::Float16 as i64))])
        }
    }
}

/// Which way a [`reorder`] goes: between row-major spatial order and each group's visiting order
/// (a permutation of the sequence axis per group; exact in any element type).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reorder {
    /// (B, G, d, L) row-major → (B, G, d, L) in visiting order.
    Visiting,
    /// (B, G, d, L) in visiting order → (B, G, d, L) row-major.
    RowMajor,
    /// (B, G, d, L) in visiting order → (B, G, L, d) row-major: the last two axes swapped in the
    /// same pass, the layout the layer's per-group LayerNorm reads.
    RowMajorChannelsLast,
}

/// Reorders the sequence axis of `x` (B, G, d, L), `width` = d channels per group, as `way` says.
pub fn reorder(
    e: &mut Emitter,
    x: &Value,
    directions: &[Direction],
    width: usize,
    (h, w): (usize, usize),
    way: Reorder,
) -> Value {
    let (g, d, l) = (directions.len() as i64, width as i64, (h * w) as i64);
    let shape = match way {
        Reorder::Visiting | Reorder::RowMajor => [0, g, d, l],
        Reorder::RowMajorChannelsLast => [0, g, l, d],
    };
    let index = reorder_index(directions, width, (h, w), way);
    gather_flat(e, x, index, &shape)
}

/// For each output element of one batch item, in output order, the flat offset (g·d + i)·L + step
/// of the input element it takes.
fn reorder_index(
    directions: &[Direction],
    width: usize,
    (h, w): (usize, usize),
    way: Reorder,
) -> Vec<i32> {
    let len = h * w;
    let mut index = Vec::with_capacity(directions.len() * width * len);
    for (g, dir) in directions.iter().enumerate() {
        // order[s] = row-major position visited at step s; step_of[p] = its inverse.
        let order = dir.visiting_order(h, w);
        let mut step_of = vec![0; len];
        for (s, &p) in order.iter().enumerate() {
            step_of[p] = s;
        }
        let offset = |i: usize, step: usize| {
            i32::try_from((g * width + i) * len + step)
                .expect("a layer of fewer than 2^31 elements")
        };
        match way {
            Reorder::Visiting => {
                for i in 0..width {
                    index.extend(order.iter().map(|&p| offset(i, p)));
                }
            }
            Reorder::RowMajor => {
                for i in 0..width {
                    index.extend(step_of.iter().map(|&s| offset(i, s)));
                }
            }
            Reorder::RowMajorChannelsLast => {
                for &s in &step_of {
                    index.extend((0..width).map(|i| offset(i, s)));
                }
            }
        }
    }
    index
}

/// One `Gather` over the flattened non-batch axes of `x` with the constant `index` (shared by
/// every layer of the same shape), reshaped to `shape`: any per-group permutation and transpose
/// in a single pass, where splitting the groups, transposing, reversing and concatenating took six
/// to seven kernels per reorder.
fn gather_flat(e: &mut Emitter, x: &Value, index: Vec<i32>, shape: &[i64]) -> Value {
    let flat = e.reshape(x, &[0, -1]);
    let index = e.g.indices(&index);
    let gathered =
        e.g.op("Gather", &[&flat, &index], &[("axis", Attr::Int(1))]);
    e.reshape(&gathered, shape)
}

/// States of the recurrence h_t = exp(log_a_t)·h_{t−1} + b_t, h_{−1} = 0, along the last axis
/// of length `n` (known at export) of rank-4 tensors (B, G, d, n), as `states` asks; `local`
/// solves the chunks of this level, the levels above (n/T steps and fewer) use the closed form.
/// Chunks are at most `chunk` steps, of the length [`chunk_length`] picks.
fn chunked<S: OpSink>(
    s: &mut S,
    log_a: &Value,
    b: &Value,
    n: usize,
    chunk: usize,
    local: Local,
    states: States,
) -> Value {
    if n <= chunk {
        return match local {
            Local::Unrolled => {
                let h = unrolled(s, log_a, b, n).states;
                match states {
                    States::After => h,
                    States::Before => {
                        let stop = s.ints(&[n as i64]);
                        first_states(s, &h, &stop, states)
                    }
                }
            }
            Local::ClosedForm => {
                let mask = s.float_tensor(&format!("causal_mask_{n}"), &causal_mask(n));
                closed_form(s, log_a, b, &mask, states)
            }
        };
    }
    let t = chunk_length(n, chunk);
    let k = n.div_ceil(t);
    let padded = k * t;
    let (log_a, b) = if padded > n {
        let pads = s.ints(&[0, 0, 0, 0, 0, 0, 0, (padded - n) as i64]);
        pad_end(s, log_a, b, &pads)
    } else {
        (log_a.clone(), b.clone())
    };
    let level = ChunkLevel::solve(s, &log_a, &b, t, local);
    let entering = chunked(
        s,
        &level.chunk_log_a,
        &level.chunk_b,
        k,
        chunk,
        Local::ClosedForm,
        States::Before,
    );
    let h = level.carry(s, &entering);
    if states == States::After && padded == n {
        return h;
    }
    let stop = s.ints(&[n as i64]);
    first_states(s, &h, &stop, states)
}

/// The chunk length for a level of `n` > `max` steps, at most `max`: the longest that divides
/// `n` and leaves at most `max` chunks (the level above is then the last), else the longest
/// divisor of at least `max`/2, else `max` itself (n padded to a multiple of it). Divisors
/// spare the padding steps and the `Pad`/`Slice` pair: with `max` = 16, 196 steps (14×14)
/// become 14 chunks of 14, 49 steps 7 chunks of 7.
pub(super) fn chunk_length(n: usize, max: usize) -> usize {
    let divisors = || (1..=max).rev().filter(move |t| n.is_multiple_of(*t));
    divisors()
        .find(|t| n / t <= max)
        .or_else(|| divisors().find(|&t| 2 * t >= max))
        .unwrap_or(max)
}

/// Which states a scan returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum States {
    /// h_i, the state after step i: the scan's result.
    After,
    /// h_{i−1}, the state entering step i (zero for the first): what the level below carries
    /// into its chunks.
    Before,
}

/// The first n states of the level (`stop` = [n]) as `states` asks, from the states after each
/// step `h` (B, G, d, ≥ n; a padded level is longer): h_0 … h_{n−1} (`After`), or the states
/// entering each step, a zero in front of h_0 … h_{n−2} (`Before`).
pub(super) fn first_states<S: OpSink>(s: &mut S, h: &Value, stop: &Value, states: States) -> Value {
    let h = match states {
        States::After => h.clone(),
        States::Before => {
            let pads = s.ints(&[0, 0, 0, 1, 0, 0, 0, 0]);
            s.op("Pad", &[h, &pads], &[])
        }
    };
    let starts = s.ints(&[0]);
    let axes = s.ints(&[3]);
    s.op("Slice", &[&h, &starts, stop, &axes], &[])
}

// ---- building blocks shared with the model-local function's body (`function_scan`) ------------

/// Δ = softplus(x) by the official kernel's rule: x itself above the threshold 20.
pub(super) fn softplus<S: OpSink>(s: &mut S, x: &Value) -> Value {
    let threshold = s.float_scalar(SOFTPLUS_THRESHOLD);
    let large = s.op("Greater", &[x, &threshold], &[]);
    let soft = s.op("Softplus", &[x], &[]);
    s.op("Where", &[&large, x, &soft], &[])
}

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
    pub(super) fn solve<S: OpSink>(
        s: &mut S,
        log_a: &Value,
        b: &Value,
        t: usize,
        local: Local,
    ) -> Self {
        let t_i = t as i64;
        let log_a = s.reshape_to(log_a, &[0, 0, 0, -1, t_i]);
        let b = s.reshape_to(b, &[0, 0, 0, -1, t_i]);
        let axis = s.int_scalar(-1);
        let cumsum = s.op("CumSum", &[&log_a, &axis], &[]);
        let last_step = s.int_scalar(t_i - 1);
        let last_of =
            |s: &mut S, x: &Value| s.op("Gather", &[x, &last_step], &[("axis", Attr::Int(4))]);
        let (solution, chunk_b) = match local {
            Local::Unrolled => {
                // The last step's state is one of the unrolled results already.
                let u = unrolled(s, &log_a, &b, t);
                let last_axis = s.ints(&[-1]);
                let chunk_b = s.op("Squeeze", &[&u.last, &last_axis], &[]);
                (u.states, chunk_b)
            }
            Local::ClosedForm => {
                let mask = s.float_tensor(&format!("causal_mask_{t}"), &causal_mask(t));
                let solution = closed_form(s, &log_a, &b, &mask, States::After);
                let chunk_b = last_of(s, &solution);
                (solution, chunk_b)
            }
        };
        let chunk_log_a = last_of(s, &cumsum);
        Self {
            local: solution,
            cumsum,
            chunk_log_a,
            chunk_b,
        }
    }

    /// The states after each step (B, G, d, K·T), given the states entering each chunk,
    /// `entering` (B, G, d, K) (the end state of the chunk before, zero for the first): each
    /// chunk's own solution plus the entering state decayed by exp(S_i) inside the chunk.
    pub(super) fn carry<S: OpSink>(&self, s: &mut S, entering: &Value) -> Value {
        let last_axis = s.ints(&[-1]);
        let entering = s.op("Unsqueeze", &[entering, &last_axis], &[]);
        let decay = s.op("Exp", &[&self.cumsum], &[]);
        let carried = s.op("Mul", &[&decay, &entering], &[]);
        let states = s.op("Add", &[&self.local, &carried], &[]);
        s.reshape_to(&states, &[0, 0, 0, -1])
    }
}

/// How a level solves its chunks from a zero state. The levels above the first (L/T steps and
/// fewer) use the closed form; the model's layers solve the first, which holds all L steps,
/// unrolled. (The closed form there: on the H100 at batch 1 under CUDA graphs 4–5 % faster, at
/// batch 128 2.2–2.9× slower; benchmarks/h100-scan-modes/closed-form-first-level/. Tests use it to
/// check the closed form over every step of long sequences.)
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Local {
    /// The recurrence itself, unrolled over the T steps: a few operations per element but ~2T
    /// nodes.
    Unrolled,
    /// The masked T×T decay matrix: ~T exponentials and products per element but a handful of
    /// nodes.
    ClosedForm,
}

/// [`unrolled`]'s result.
pub(super) struct Unrolled {
    /// The states after each step, shaped as the inputs.
    pub states: Value,
    /// The last step's, with the last axis kept (length 1).
    pub last: Value,
}

/// Zero-initial-state solution along the last axis, of static length `t`, step by step:
/// h_0 = b_0, h_i = exp(log_a_i)·h_{i−1} + b_i, every slice of the other axes at once.
pub(super) fn unrolled<S: OpSink>(s: &mut S, log_a: &Value, b: &Value, t: usize) -> Unrolled {
    assert!(t >= 1, "a recurrence of no steps");
    if t == 1 {
        return Unrolled {
            states: b.clone(),
            last: b.clone(),
        };
    }
    let a = s.op("Exp", &[log_a], &[]);
    let last_axis = [("axis", Attr::Int(-1))];
    let a_steps = s.node("Split", &[&a], t, &last_axis);
    let b_steps = s.node("Split", &[b], t, &last_axis);
    let mut states = vec![b_steps[0].clone()];
    for (a_i, b_i) in a_steps.iter().zip(&b_steps).skip(1) {
        let decayed = s.op("Mul", &[a_i, states.last().unwrap()], &[]);
        states.push(s.op("Add", &[&decayed, b_i], &[]));
    }
    let refs: Vec<&Value> = states.iter().collect();
    Unrolled {
        states: s.op("Concat", &refs, &last_axis),
        last: states.last().unwrap().clone(),
    }
}

/// Zero-initial-state states along the last axis in closed form:
/// h_i = Σ_{j ≤ i} exp(S_i − S_j)·b_j with S the cumulative sums of log_a (`States::After`), or
/// h_{i−1} = Σ_{j < i} exp(S_{i−1} − S_j)·b_j (`States::Before`: the top level hands the level
/// below its entering states directly, no shift). `mask` is t×t: 0 on and below the diagonal,
/// −∞ above; the model-local function builds it at run time for its top level, whose length is
/// not static.
///
/// Each exponent is summed over its own segment (log_a_{j+1} + … + log_a_i, or … + log_a_{i−1}:
/// the row vector log_a masked to the steps after j, cumulatively summed, inclusively or not), not
/// subtracted from two cumulative sums: those may be large (strong decays earlier in the chunk)
/// while their difference is small, and the subtraction would cancel most of its digits. −∞ where
/// j does not contribute (after the sum, before `Exp`) keeps every exponent ≤ 0. With
/// E[j][i] = exp(exponent), the result is the row vector b times E.
pub(super) fn closed_form<S: OpSink>(
    s: &mut S,
    log_a: &Value,
    b: &Value,
    mask: &Value,
    states: States,
) -> Value {
    let axis = s.int_scalar(-1);
    let row_axis = s.ints(&[-2]);
    // [j][k] = log_a_k for k > j, else 0 (the −∞ entries of the mask are the steps after j) ...
    let after = s.op("IsInf", &[mask], &[]);
    let zero = s.float_scalar(0.0);
    let row = s.op("Unsqueeze", &[log_a, &row_axis], &[]);
    let segment = s.op("Where", &[&after, &row, &zero], &[]);
    // ... summed up to i: [j][i] = S_i − S_j (After) or S_{i−1} − S_j (Before) where j
    // contributes, −∞ where it does not (j > i, or j ≥ i).
    let (exclusive, excluded) = match states {
        States::After => (
            0,
            s.op("Transpose", &[mask], &[("perm", Attr::Ints(vec![1, 0]))]),
        ),
        States::Before => {
            let minus_inf = s.float_scalar(f32::NEG_INFINITY);
            (1, s.op("Where", &[&after, &zero, &minus_inf], &[]))
        }
    };
    let exponent = s.op(
        "CumSum",
        &[&segment, &axis],
        &[("exclusive", Attr::Int(exclusive))],
    );
    let exponent = s.op("Add", &[&exponent, &excluded], &[]);
    let decay = s.op("Exp", &[&exponent], &[]);
    let b = s.op("Unsqueeze", &[b, &row_axis], &[]);
    let h = s.op("MatMul", &[&b, &decay], &[]);
    s.op("Squeeze", &[&h, &row_axis], &[])
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a `reorder_index` to one batch item `x` (the Gather it becomes).
    fn gather(x: &[i32], index: &[i32]) -> Vec<i32> {
        index.iter().map(|&i| x[i as usize]).collect()
    }

    #[test]
    fn chunk_lengths_divide_the_level_when_they_can() {
        // One level above: 14×14 steps, 7×7, 100 = 10×10.
        assert_eq!(chunk_length(196, 16), 14);
        assert_eq!(chunk_length(49, 16), 7);
        assert_eq!(chunk_length(100, 16), 10);
        // More levels above: the longest divisor ≥ max/2 (3136 = 16·196, 450 = 15·30).
        assert_eq!(chunk_length(3136, 16), 16);
        assert_eq!(chunk_length(450, 16), 15);
        // No such divisor (a prime, 2·17): padded to multiples of max.
        assert_eq!(chunk_length(257, 16), 16);
        assert_eq!(chunk_length(34, 16), 16);
        assert_eq!(chunk_length(35, 4), 4);
    }

    #[test]
    fn reorders_follow_the_visiting_order_and_invert() {
        let directions = [
            Direction::RowMajor,
            Direction::ColumnMajor,
            Direction::RowMajorReversed,
            Direction::ColumnMajorReversed,
        ];
        let (width, h, w) = (3, 5, 7);
        let len = h * w;
        // x[g][i][p] = its own flat offset, so a gathered value says where it came from.
        let x: Vec<i32> = (0..(directions.len() * width * len) as i32).collect();
        let visiting = gather(
            &x,
            &reorder_index(&directions, width, (h, w), Reorder::Visiting),
        );
        for (g, dir) in directions.iter().enumerate() {
            let order = dir.visiting_order(h, w);
            for i in 0..width {
                for (s, &p) in order.iter().enumerate() {
                    let at = (g * width + i) * len;
                    assert_eq!(
                        visiting[at + s],
                        x[at + p],
                        "group {g} channel {i} step {s}"
                    );
                }
            }
        }
        let back = gather(
            &visiting,
            &reorder_index(&directions, width, (h, w), Reorder::RowMajor),
        );
        assert_eq!(back, x);
        let last = Reorder::RowMajorChannelsLast;
        let channels_last = gather(&visiting, &reorder_index(&directions, width, (h, w), last));
        for g in 0..directions.len() {
            for p in 0..len {
                for i in 0..width {
                    let want = x[(g * width + i) * len + p];
                    assert_eq!(channels_last[(g * len + p) * width + i], want);
                }
            }
        }
    }
}
