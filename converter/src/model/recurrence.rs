//! The scalar first-order linear recurrence h_t = exp(ℓ_t)·h_{t−1} + b_t (ℓ_t ≤ 0, h_{−1} = 0)
//! along the last axis of rank-4 tensors, in standard ONNX operators: the scan of
//! `--scan portable` ([`super::portable_scan`]) and of the `--scan function` body
//! ([`super::function_scan`], where the length is only known at run time) are built from these
//! blocks, written through [`OpSink`].
//!
//! Its exact chunked closed form: cut the sequence into chunks of T steps; inside a chunk, with S_i
//! the cumulative sum of ℓ from the chunk start,
//!     h_i = Σ_{j ≤ i} exp(S_i − S_j)·b_j  +  exp(S_i)·h_in.
//! The first term, the chunk's zero-initial-state solution, is computed in one of two ways
//! ([`Local`]): on the first level, which holds all L steps, as the recurrence itself unrolled
//! over the T steps of every chunk at once (`Split` into T slices, one `Mul` and one `Add` per
//! step, `Concat`): a few operations per element, for ~2T nodes; on the levels above (L/T steps
//! and fewer) as the masked T×T decay-matrix product written above: ~T exponentials and products
//! per element, for a handful of nodes. (Unrolling every level made ONNX Runtime no faster on CPU
//! and tract's model preparation 1.4× slower.) The incoming states are themselves a scalar linear
//! recurrence over chunks (a = exp(S_{T−1}), b = the chunk's final local state), solved by the
//! same construction one level up, until one chunk remains; each level hands the level below the
//! states *entering* its chunks (the top level's closed form gives them directly, with an
//! exclusive sum). Chunk lengths divide their level where they can (`chunk_length`: tiny's
//! 196 = 14 chunks of 14, 49 = 7 of 7), so no padding steps are computed. Every factor is an
//! a_t = exp(ℓ_t) ≤ 1, an exp(S_i) ≤ 1 of a cumulative sum inside one chunk, or an
//! exp(S_i − S_j) ≤ 1 (the upper triangle is masked with −∞ before `Exp`), so nothing overflows
//! whatever the sequence length — unlike exp of a global cumulative sum.

use crate::onnx::{Attr, OpSink, Value};
use crate::tensor::Tensor;

/// States of the recurrence h_t = exp(log_a_t)·h_{t−1} + b_t, h_{−1} = 0, along the last axis
/// of length `n` (known at export) of rank-4 tensors (B, G, d, n), as `states` asks; `local`
/// solves the chunks of this level, the levels above (n/T steps and fewer) use the closed form.
/// Chunks are at most `chunk` steps, of the length [`unrolled_chunk_length`] (an unrolled level)
/// or [`chunk_length`] (a closed-form one) picks.
pub(super) fn chunked<S: OpSink>(
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
    let t = match local {
        Local::Unrolled => unrolled_chunk_length(n, chunk),
        Local::ClosedForm => chunk_length(n, chunk),
    };
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

/// The chunk length for an unrolled level of `n` > `max` steps: among the divisors of `n` from
/// `max`/2 to `max`, one that leaves the fewest closed-form levels above, and of those the
/// shortest: each unrolled step is two nodes, a closed-form level above about a dozen whatever
/// its length (with chunks of at least `max`/2 it holds at most twice as many steps); else
/// [`chunk_length`]. With `max` = 16: 784 steps (28×28) become 98 chunks of 8 (then 7 of 14)
/// instead of 49 of 16, 3136 (56×56) 224 chunks of 14 (then 14 of 16) instead of 196 of 16.
pub(super) fn unrolled_chunk_length(n: usize, max: usize) -> usize {
    (max.div_ceil(2)..=max)
        .filter(|t| n.is_multiple_of(*t))
        .min_by_key(|&t| (levels_above(n / t, max), t))
        .unwrap_or_else(|| chunk_length(n, max))
}

/// How many closed-form levels, the top one included, solve a recurrence over `n` chunks
/// ([`chunk_length`] at each).
fn levels_above(n: usize, max: usize) -> usize {
    if n <= max {
        return 1;
    }
    1 + levels_above(n.div_ceil(chunk_length(n, max)), max)
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
/// unrolled. (The closed form there: on the H100 under CUDA graphs 4–5 % faster at batch 1, at
/// batch 128 1.66–1.87× slower: 2.2–2.9× the custom op's time where unrolled takes 1.3–1.5×;
/// benchmarks/h100-scan-modes/closed-form-first-level/. Tests use it to check the closed form over
/// every step of long sequences.)
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
    fn unrolled_chunks_are_the_shortest_with_the_fewest_levels_above() {
        // 28×28: 8 (98 chunks, then 7 of 14) has as few levels above as 16 (49, then 7 of 7).
        assert_eq!(unrolled_chunk_length(784, 16), 8);
        // 56×56: 14 (224 chunks, then 14 of 16) as few as 16 (196, then 14 of 14); 8 has one more.
        assert_eq!(unrolled_chunk_length(3136, 16), 14);
        assert_eq!(levels_above(3136 / 8, 16), 3);
        assert_eq!(levels_above(3136 / 14, 16), 2);
        // 14×14: only 14 divides; 7×7: no divisor from 8 to 16, so chunk_length's 7.
        assert_eq!(unrolled_chunk_length(196, 16), 14);
        assert_eq!(unrolled_chunk_length(49, 16), 7);
        // A prime: padded chunks of max.
        assert_eq!(unrolled_chunk_length(257, 16), 16);
    }
}
