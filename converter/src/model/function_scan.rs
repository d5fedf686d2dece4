//! `--scan function`: the `ai.groupmamba::SelectiveScan` op as a model-local function.
//!
//! The graph is the custom-op graph (one `SelectiveScan` node per layer); the model also carries
//! one `FunctionProto` of the same domain and name whose body computes the op of
//! `plugins/SPEC.md` from standard operators (opset 17). A runtime with the op registered runs
//! the op; any other runtime inlines the body. At IR version 8 a function has no `overload`, so
//! the one body serves every call site: it is generic over N, C, G, H, W (read with `Shape`),
//! the element type T (float32 inside, `CastLike` back to T at the end) and the `directions`
//! attribute (a `Constant` whose `value_ints` refers to it, turned into index data).
//!
//! Body, in order:
//! 1. Cast u, delta, B, C to float32; softplus(delta + bias) with the threshold 20,
//!    log a = Δ·A, b = Δ·B·u on (N, G, C/G, L).
//! 2. The visiting order of each group as data: with t = 0..L−1, the column-major order
//!    cm(t) = (t mod H)·W + t div H, base = cm for odd directions, t for even ones, and the
//!    reversed directions (2, 3) visit L−1−base; the inverse orders likewise with
//!    cm⁻¹(p) = (p mod W)·H + p div W. `GatherElements` on the last axis reorders log a and b
//!    into visiting order, and the states back.
//! 3. The recurrence over the last axis, exactly, with the chunked form of [`super::recurrence`]
//!    (the blocks the portable scan uses): [`LEVELS`] levels of chunks of T steps (padded at the
//!    end with a = 1, b = 0 to a multiple of T, sliced back afterwards), each chunk's own solution the
//!    recurrence unrolled over its T steps, then one closed form over all remaining
//!    chunk-of-chunks, whose causal mask is built at run time (`Range`, `Greater`, `Where`).
//!    Every `Exp` sees a step's Δ·A ≤ 0, a cumulative sum of them, or a difference of cumulative
//!    sums (≤ 0 or masked to −∞), so nothing overflows at any length.
//! 4. y = C·h + D·u, reshaped to u's shape, `CastLike(y, u)`.
//!
//! Cost per channel, L = H·W, T the chunk length: the two unrolled levels a few operations per
//! step (≈ L + L/T), the top level one K×K matrix with K = ⌈L/T²⌉ (K² = L²/T⁴ products). The top
//! level costs no more than the first while L ≤ T⁴ (65,536 positions with T = 16, a 256×256
//! feature map) and grows quadratically in L/T² beyond; its K×K matrix per channel is also held in
//! memory (K = 256 at L = T⁴). Short sequences are padded to T at each level (e.g. the
//! ClassBlock's L = 1).

use gm_ops::spec::{DOMAIN, OP_TYPE};

use super::portable_scan::softplus;
use super::recurrence::{closed_form, first_states, pad_end, ChunkLevel, Local, States};
use crate::onnx::proto::{DataType, FunctionProto};
use crate::onnx::{Attr, FunctionBuilder, OpSink, Value};

/// Levels of fixed-length chunks before the closed form over everything that remains.
pub const LEVELS: usize = 2;

/// Formal inputs, in the op's order (SPEC §2).
pub const INPUTS: [&str; 7] = ["u", "delta", "A", "B", "C", "D", "delta_bias"];
pub const OUTPUT: &str = "y";
pub const ATTRIBUTE: &str = "directions";

/// The function `ai.groupmamba::SelectiveScan` with chunks of `chunk` steps, importing only the
/// standard opset `onnx_opset` (≥ 15 for `CastLike`).
pub fn selective_scan_function(chunk: usize, onnx_opset: i64) -> FunctionProto {
    assert!(chunk >= 1, "chunk length must be at least 1");
    let mut f = FunctionBuilder::new();
    let [u, delta, a, b, c, d, bias] = INPUTS.map(|name| f.input(name));
    let to_float = [("to", Attr::Int(DataType::Float as i64))];
    let uf = f.op("Cast", &[&u], &to_float);
    let deltaf = f.op("Cast", &[&delta], &to_float);
    let bf = f.op("Cast", &[&b], &to_float);
    let cf = f.op("Cast", &[&c], &to_float);
    let directions = f.op(
        "Constant",
        &[],
        &[("value_ints", Attr::IntsRef(ATTRIBUTE.to_string()))],
    );

    // Shapes: (N, C, L) for the per-channel work, (N, G, C/G, L) for the scan, (N, G, 1, L) rows.
    let u_shape = f.op("Shape", &[&u], &[]);
    let u3 = f.reshape_to(&uf, &[0, 0, -1]);
    let delta3 = f.reshape_to(&deltaf, &[0, 0, -1]);
    let len = f.op("Shape", &[&u3], &[("start", Attr::Int(2))]);
    let groups = f.op("Shape", &[&directions], &[]);
    let zero = f.ints(&[0]);
    let minus_one = f.ints(&[-1]);
    let grouped = f.op(
        "Concat",
        &[&zero, &groups, &minus_one, &len],
        &[("axis", Attr::Int(0))],
    );
    let b_rows = f.reshape_to(&bf, &[0, 0, 1, -1]);
    let c_rows = f.reshape_to(&cf, &[0, 0, 1, -1]);
    let column = f.ints(&[1]);
    let per_channel = |f: &mut FunctionBuilder, x: &Value| f.op("Unsqueeze", &[x, &column], &[]);
    let a = per_channel(&mut f, &a);
    let d = per_channel(&mut f, &d);
    let bias = per_channel(&mut f, &bias);

    // Δ = softplus(delta + bias) (x itself above the threshold), log a = Δ·A, b = Δ·B·u.
    let x = f.op("Add", &[&delta3, &bias], &[]);
    let dt = softplus(&mut f, &x);
    let log_a = f.op("Mul", &[&dt, &a], &[]);
    let log_a = f.op("Reshape", &[&log_a, &grouped], &[]);
    let dt = f.op("Reshape", &[&dt, &grouped], &[]);
    let ug = f.op("Reshape", &[&u3, &grouped], &[]);
    let input = f.op("Mul", &[&dt, &b_rows], &[]);
    let input = f.op("Mul", &[&input, &ug], &[]);

    // Into each group's visiting order, scan, and back to row-major order.
    let (order, inverse) = visiting_orders(&mut f, &u, &len, &directions);
    let scan_shape = f.op("Shape", &[&log_a], &[]);
    let index = |f: &mut FunctionBuilder, order: &Value| {
        let axes = f.ints(&[0, 2]);
        let order = f.op("Unsqueeze", &[order, &axes], &[]);
        f.op("Expand", &[&order, &scan_shape], &[])
    };
    let along_sequence = [("axis", Attr::Int(3))];
    let forward = index(&mut f, &order);
    let log_a = f.op("GatherElements", &[&log_a, &forward], &along_sequence);
    let input = f.op("GatherElements", &[&input, &forward], &along_sequence);
    let states = scan(
        &mut f,
        &log_a,
        &input,
        chunk,
        LEVELS,
        Local::Unrolled,
        States::After,
    );
    let backward = index(&mut f, &inverse);
    let states = f.op("GatherElements", &[&states, &backward], &along_sequence);

    // y = C·h + D·u in u's shape and type.
    let y = f.op("Mul", &[&c_rows, &states], &[]);
    let y = f.op("Reshape", &[&y, &u_shape], &[]);
    let skip = f.op("Mul", &[&d, &u3], &[]);
    let skip = f.op("Reshape", &[&skip, &u_shape], &[]);
    let y = f.op("Add", &[&y, &skip], &[]);
    let y = f.op("CastLike", &[&y, &u], &[]);
    f.output(&y, OUTPUT);

    let doc = format!(
        "{DOMAIN}::{OP_TYPE} (plugins/SPEC.md) from standard operators: float32 inside, exact \
         chunked closed form of the recurrence ({LEVELS} levels of chunks of {chunk} steps, then \
         one closed form over the rest), directions as index data; any shapes and directions"
    );
    f.finish(
        DOMAIN,
        OP_TYPE,
        &INPUTS,
        &[OUTPUT],
        &[ATTRIBUTE],
        onnx_opset,
        doc,
    )
}

/// (order, inverse), both (G, L) int64: order[g][s] is the row-major position that group g
/// visits at step s (SPEC §4), inverse[g][p] the step at which it visits position p.
fn visiting_orders(
    f: &mut FunctionBuilder,
    u: &Value,
    len: &Value,
    directions: &Value,
) -> (Value, Value) {
    let height = f.op(
        "Shape",
        &[u],
        &[("start", Attr::Int(2)), ("end", Attr::Int(3))],
    );
    let width = f.op(
        "Shape",
        &[u],
        &[("start", Attr::Int(3)), ("end", Attr::Int(4))],
    );
    let first_axis = f.ints(&[0]);
    let len_scalar = f.op("Squeeze", &[len, &first_axis], &[]);
    let zero = f.int_scalar(0);
    let one = f.int_scalar(1);
    let two = f.int_scalar(2);
    let steps = f.op("Range", &[&zero, &len_scalar, &one], &[]);
    // (t mod rows)·cols + t div rows: the transpose of a rows-major walk of a rows×cols grid.
    let transposed = |f: &mut FunctionBuilder, rows: &Value, cols: &Value| {
        let quotient = f.op("Div", &[&steps, rows], &[]);
        let back = f.op("Mul", &[&quotient, rows], &[]);
        let remainder = f.op("Sub", &[&steps, &back], &[]);
        let scaled = f.op("Mul", &[&remainder, cols], &[]);
        f.op("Add", &[&scaled, &quotient], &[])
    };
    let column_major = transposed(f, &height, &width);
    let column_major_inverse = transposed(f, &width, &height);

    let column = f.ints(&[1]);
    let dirs = f.op("Unsqueeze", &[directions, &column], &[]);
    let half = f.op("Div", &[&dirs, &two], &[]);
    let even_part = f.op("Mul", &[&half, &two], &[]);
    let parity = f.op("Sub", &[&dirs, &even_part], &[]);
    let odd = f.op("Equal", &[&parity, &one], &[]);
    let reversed = f.op("Greater", &[&dirs, &one], &[]);
    let last = f.op("Sub", &[len, &one], &[]);
    let orient = |f: &mut FunctionBuilder, transposed: &Value| {
        let base = f.op("Where", &[&odd, transposed, &steps], &[]);
        let flipped = f.op("Sub", &[&last, &base], &[]);
        f.op("Where", &[&reversed, &flipped, &base], &[])
    };
    let order = orient(f, &column_major);
    let inverse = orient(f, &column_major_inverse);
    (order, inverse)
}

/// States of h_t = exp(log_a_t)·h_{t−1} + b_t, h_{−1} = 0, along the last axis (length known
/// only at run time) of rank-4 tensors, as `states` asks: `levels` levels of chunks of `chunk`
/// steps, then the closed form over everything left.
fn scan(
    f: &mut FunctionBuilder,
    log_a: &Value,
    b: &Value,
    chunk: usize,
    levels: usize,
    local: Local,
    states: States,
) -> Value {
    if levels == 0 {
        let mask = runtime_causal_mask(f, log_a);
        return closed_form(f, log_a, b, &mask, states);
    }
    let t = chunk as i64;
    let len = f.op("Shape", &[log_a], &[("start", Attr::Int(3))]);
    // Pad to K·T steps, K = ⌈len / T⌉.
    let t_minus_one = f.ints(&[t - 1]);
    let t_vec = f.ints(&[t]);
    let rounded = f.op("Add", &[&len, &t_minus_one], &[]);
    let chunks = f.op("Div", &[&rounded, &t_vec], &[]);
    let padded = f.op("Mul", &[&chunks, &t_vec], &[]);
    let extra = f.op("Sub", &[&padded, &len], &[]);
    let no_pads = f.ints(&[0; 7]);
    let pads = f.op("Concat", &[&no_pads, &extra], &[("axis", Attr::Int(0))]);
    let (log_a, b) = pad_end(f, log_a, b, &pads);

    let level = ChunkLevel::solve(f, &log_a, &b, chunk, local);
    let entering = scan(
        f,
        &level.chunk_log_a,
        &level.chunk_b,
        chunk,
        levels - 1,
        Local::ClosedForm,
        States::Before,
    );
    let h = level.carry(f, &entering);
    first_states(f, &h, &len, states)
}

/// K×K (K = the last axis of `x`): 0 on and below the diagonal, −∞ above.
fn runtime_causal_mask(f: &mut FunctionBuilder, x: &Value) -> Value {
    let len = f.op("Shape", &[x], &[("start", Attr::Int(3))]);
    let first_axis = f.ints(&[0]);
    let len = f.op("Squeeze", &[&len, &first_axis], &[]);
    let zero = f.int_scalar(0);
    let one = f.int_scalar(1);
    let steps = f.op("Range", &[&zero, &len, &one], &[]);
    let rows_axis = f.ints(&[1]);
    let rows = f.op("Unsqueeze", &[&steps, &rows_axis], &[]);
    let future = f.op("Greater", &[&steps, &rows], &[]);
    let minus_inf = f.float_scalar(f32::NEG_INFINITY);
    let zero_f = f.float_scalar(0.0);
    f.op("Where", &[&future, &minus_inf, &zero_f], &[])
}
