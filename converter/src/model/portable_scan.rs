//! The selective scan from standard ONNX operators only (`--scan portable`), for runtimes that
//! cannot load the `ai.groupmamba::SelectiveScan` op.
//!
//! With d_state = 1 each channel's scan is a scalar first-order linear recurrence
//! h_t = a_t·h_{t−1} + b_t, a_t = exp(ℓ_t), ℓ_t = Δ_t·A ≤ 0, b_t = Δ_t·B_t·u_t, solved exactly by
//! the chunked closed form of [`super::recurrence`]. Shapes are static (per export size), no
//! `Loop`/`Scan`. As in the op, everything is float32 (in an FP16 export the layer widens u once and
//! runs the projections that make Δ, B and C in float32; y is narrowed once).
//!
//! Scan directions are per-group reorderings of the sequence axis into visiting order, undone
//! after the scan. Each reorder is one `Gather` over the flattened (G, d, L) axes with a constant
//! int32 index (`Direction::visiting_order`, shared by the layers of a stage), so any mix of
//! directions costs one kernel; the way back also swaps the last two axes into the (B, G, L, d)
//! layout the layer's out_norm reads ([`Reorder::RowMajorChannelsLast`]). The layer reorders its map
//! u before the per-position projections that make Δ, B and C ([`reorder`],
//! [`emit_visiting`]): two reorders per layer, in the model's element type.

use gm_ops::spec::Direction;

use super::emit::Emitter;
use super::recurrence::{chunked, Local, States};
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
        e.widen(&x)
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
    let y = e.narrow(&y);
    reorder(e, &y, directions, width, (h, w), Reorder::RowMajor)
}

/// The scans of sequences already in visiting order (every input's last axis, of length `len`,
/// is the step index). Inputs and y (B, G, d, len) are float32 whatever the model's element type:
/// as in the op, the state and all arithmetic are float32 and y is rounded once, by the caller
/// ([`Emitter::narrow`]). `local` solves the chunks of the full-length level (the levels above use the
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

/// Δ = softplus(x) by the official kernel's rule: x itself above the threshold 20.
pub(super) fn softplus<S: OpSink>(s: &mut S, x: &Value) -> Value {
    let threshold = s.float_scalar(SOFTPLUS_THRESHOLD);
    let large = s.op("Greater", &[x, &threshold], &[]);
    let soft = s.op("Softplus", &[x], &[]);
    s.op("Where", &[&large, x, &soft], &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a `reorder_index` to one batch item `x` (the Gather it becomes).
    fn gather(x: &[i32], index: &[i32]) -> Vec<i32> {
        index.iter().map(|&i| x[i as usize]).collect()
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
