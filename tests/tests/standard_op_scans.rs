//! The scan in standard ONNX operators, at the op level, in ONNX Runtime with our op NOT registered,
//! against the reference CPU kernel (`gm_ops::selective_scan`): the body of the model-local function
//! `ai.groupmamba::SelectiveScan` (`--scan function`; ONNX Runtime inlines it) and the static graph of
//! `--scan portable`, on shapes the fixtures do not reach: L = 1, L not a multiple of the chunk, L
//! beyond chunk² (the function's top level has K > 1; the portable graph three levels), G ≠ 4,
//! repeated and reversed directions, softplus inputs above the threshold, decays that underflow to
//! 0, batch > 1, and float16 u/delta/B/C (cast to float32 inside, back to float16 at the end).
//!
//! Each case is a one-scan model: the graph input is `u`, the other six inputs are initializers.
//! Metric: |graph − kernel| ≤ 1e-5 + 1e-5·|kernel| elementwise (float32; both forms are exact, so
//! only rounding differs); float16: ≤ 2e-3·|kernel| + 1e-6 (one f16 rounding of the output, the
//! inputs rounded to f16 identically for both).

use std::path::PathBuf;

use std::collections::BTreeMap;

use gm_converter::export::{IR_VERSION, ONNX_OPSET};
use gm_converter::model::emit::Emitter;
use gm_converter::model::function_scan::selective_scan_function;
use gm_converter::model::portable_scan::{self, PortableScanInputs};
use gm_converter::model::recurrence::Local;
use gm_converter::onnx::proto::{DataType, ModelProto, OperatorSetIdProto};
use gm_converter::onnx::{Attr, Dim, FloatType, GraphBuilder};
use gm_converter::tensor::Tensor;
use gm_ops::{
    selective_scan_to_vec, Direction, ScanInputs, ScanShape, DOMAIN, OPSET_VERSION, OP_TYPE,
};
use gm_runtime::backend::ort::{OrtBackend, OrtLoadOptions};
use gm_runtime::backend::{Backend, HostTensor};
use gm_runtime::testing::{ort_or_skip, Rng};

/// Which standard-op form of the scan a case builds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// A `SelectiveScan` node plus its model-local function (inlined by ONNX Runtime).
    Function,
    /// The `--scan portable` graph, shapes static, its first level's chunks solved as given.
    Portable(Local),
}

struct Case {
    shape: ScanShape,
    directions: Vec<i64>,
    chunk: usize,
    fp16: bool,
    form: Form,
    /// Scales A: large values make whole chunks' decays underflow to 0.
    a_scale: f32,
}

fn case(n: usize, c: usize, g: usize, (h, w): (usize, usize), dirs: &[i64], chunk: usize) -> Case {
    Case {
        shape: ScanShape {
            batch: n,
            channels: c,
            groups: g,
            height: h,
            width: w,
        },
        directions: dirs.to_vec(),
        chunk,
        fp16: false,
        form: Form::Function,
        a_scale: 1.0,
    }
}

fn portable(mut c: Case) -> Case {
    c.form = Form::Portable(Local::Unrolled);
    c
}

fn round_f16(v: &mut [f32]) {
    for x in v {
        *x = half::f16::from_f32(*x).to_f32();
    }
}

struct Inputs {
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    bias: Vec<f32>,
}

fn inputs(case: &Case, seed: u64) -> Inputs {
    let ScanShape {
        batch: n,
        channels: c,
        groups: g,
        height: h,
        width: w,
    } = case.shape;
    let mut rng = Rng::new(seed);
    let mut delta = rng.vec(n * c * h * w, -4.0, 3.0);
    // Every 7th step far above softplus's threshold (softplus(x) = x there).
    for x in delta.iter_mut().step_by(7) {
        *x += 22.0;
    }
    let mut inputs = Inputs {
        u: rng.vec(n * c * h * w, -1.5, 1.5),
        delta,
        a: rng
            .vec(c, -1.5, -0.01)
            .into_iter()
            .map(|a| a * case.a_scale)
            .collect(),
        b: rng.vec(n * g * h * w, -1.0, 1.0),
        c: rng.vec(n * g * h * w, -1.0, 1.0),
        d: rng.vec(c, -1.0, 1.0),
        bias: rng.vec(c, -0.5, 0.5),
    };
    if case.fp16 {
        for v in [
            &mut inputs.u,
            &mut inputs.delta,
            &mut inputs.b,
            &mut inputs.c,
        ] {
            round_f16(v);
        }
    }
    inputs
}

/// A model computing one scan: input `u` (float32; cast to float16 in the graph for fp16 cases),
/// output `y` (float32), the other inputs initializers. `Form::Function`: one SelectiveScan node
/// and the function; `Form::Portable`: the portable graph.
fn write_model(case: &Case, x: &Inputs, path: &PathBuf) {
    let ScanShape {
        batch: n,
        channels: c,
        groups: g,
        height: h,
        width: w,
    } = case.shape;
    let mut gb = GraphBuilder::new("selective_scan");
    let map = [n, c, h, w].map(Dim::Fixed);
    let u = gb.input("u", DataType::Float, &map);
    let t = if case.fp16 {
        FloatType::F16
    } else {
        FloatType::F32
    };
    let u = if case.fp16 {
        gb.op(
            "Cast",
            &[&u],
            &[("to", Attr::Int(DataType::Float16 as i64))],
        )
    } else {
        u
    };
    let delta_t = Tensor::new(vec![n, c, h, w], x.delta.clone());
    let rows = |v: &Vec<f32>| Tensor::new(vec![n, g, h, w], v.clone());
    let per_channel = |v: &Vec<f32>| Tensor::new(vec![c], v.clone());
    let (y, functions, mut gb) = match case.form {
        Form::Function => {
            let delta = gb.initializer("delta", &delta_t, t);
            let b = gb.initializer("B", &rows(&x.b), t);
            let cc = gb.initializer("C", &rows(&x.c), t);
            let a = gb.initializer("A", &per_channel(&x.a), FloatType::F32);
            let d = gb.initializer("D", &per_channel(&x.d), FloatType::F32);
            let bias = gb.initializer("delta_bias", &per_channel(&x.bias), FloatType::F32);
            let y = gb
                .node(
                    DOMAIN,
                    OP_TYPE,
                    &[&u, &delta, &a, &b, &cc, &d, &bias],
                    1,
                    &[("directions", Attr::Ints(case.directions.clone()))],
                )
                .remove(0);
            (y, vec![selective_scan_function(case.chunk, ONNX_OPSET)], gb)
        }
        Form::Portable(local) => {
            let no_weights = BTreeMap::new();
            let mut e = Emitter::new(gb, &no_weights, t, false);
            let l = (h * w) as i64;
            let grouped = [0, g as i64, (c / g) as i64, l];
            let row_shape = [0, g as i64, 1, l];
            let ug = e.reshape(&u, &grouped);
            let delta = e.constant("delta", &delta_t);
            let delta = e.reshape(&delta, &grouped);
            let b = e.constant("B", &rows(&x.b));
            let b = e.reshape(&b, &row_shape);
            let cc = e.constant("C", &rows(&x.c));
            let cc = e.reshape(&cc, &row_shape);
            let directions = Direction::parse_list(&case.directions).unwrap();
            let inputs = PortableScanInputs {
                u: &ug,
                delta: &delta,
                b_rows: &b,
                c_rows: &cc,
                a: &per_channel(&x.a),
                d: &per_channel(&x.d),
                delta_bias: &per_channel(&x.bias),
            };
            let y = portable_scan::emit(
                &mut e,
                inputs,
                &directions,
                c / g,
                (h, w),
                case.chunk,
                local,
            );
            let y = e.reshape(&y, &[n as i64, c as i64, h as i64, w as i64]);
            (y, vec![], e.g)
        }
    };
    let y = if case.fp16 {
        gb.op("Cast", &[&y], &[("to", Attr::Int(DataType::Float as i64))])
    } else {
        y
    };
    gb.output(&y, "y", DataType::Float, &map);
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "gm-tests".into(),
        graph: Some(gb.finish()),
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: ONNX_OPSET,
            },
            OperatorSetIdProto {
                domain: DOMAIN.into(),
                version: OPSET_VERSION,
            },
        ],
        functions,
        ..ModelProto::default()
    };
    use prost::Message;
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

fn reference(case: &Case, x: &Inputs) -> Vec<f32> {
    let directions = Direction::parse_list(&case.directions).unwrap();
    let mut y = selective_scan_to_vec(
        &case.shape,
        &directions,
        ScanInputs {
            u: &x.u,
            delta: &x.delta,
            a: &x.a,
            b: &x.b,
            c: &x.c,
            d: &x.d,
            delta_bias: &x.bias,
        },
    )
    .unwrap();
    if case.fp16 {
        round_f16(&mut y);
    }
    y
}

fn run_cases(test: &str, cases: &[Case]) {
    let Some(rt) = ort_or_skip(test) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("gm-tests-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (k, case) in cases.iter().enumerate() {
        let x = inputs(case, k as u64 + 1);
        let path = dir.join(format!("case{k}.onnx"));
        write_model(case, &x, &path);
        let options = OrtLoadOptions {
            without_scan_op: true,
            ..OrtLoadOptions::default()
        };
        let mut backend = OrtBackend::load_with_options(rt, &path, &options).unwrap();
        let ScanShape {
            batch: n,
            channels: c,
            height: h,
            width: w,
            ..
        } = case.shape;
        let y = backend
            .run(&HostTensor {
                shape: vec![n, c, h, w],
                data: x.u.clone(),
            })
            .unwrap()
            .remove(0);
        let expected = reference(case, &x);
        assert_eq!(y.data.len(), expected.len());
        let (atol, rtol) = if case.fp16 {
            (1e-6, 2e-3)
        } else {
            (1e-5, 1e-5)
        };
        let mut worst = 0f32;
        let mut max_abs = 0f32;
        for (i, (got, want)) in y.data.iter().zip(&expected).enumerate() {
            let err = (got - want).abs();
            max_abs = max_abs.max(err);
            let ratio = err / (atol + rtol * want.abs());
            worst = worst.max(ratio);
            assert!(
                ratio <= 1.0,
                "{test} case {k} ({:?}, {}, directions {:?}, chunk {}, fp16 {}): element {i}: graph {got}, kernel {want}",
                case.form,
                case.shape,
                case.directions,
                case.chunk,
                case.fp16
            );
        }
        println!(
            "{test} case {k}: {:?} {} directions {:?} chunk {}{}: max abs {max_abs:.2e}, worst err/tol {worst:.3}",
            case.form,
            case.shape,
            case.directions,
            case.chunk,
            if case.fp16 { " fp16" } else { "" }
        );
    }
}

#[test]
fn inlined_body_matches_kernel_on_odd_shapes() {
    run_cases(
        "inlined_body_matches_kernel_on_odd_shapes",
        &[
            // The ClassBlock's L = 1, every direction.
            case(2, 8, 4, (1, 1), &[0, 1, 2, 3], 16),
            // L = 35 with chunk 4: padded at both levels, top level K = 3.
            case(2, 8, 4, (5, 7), &[0, 1, 2, 3], 4),
            // G = 2, repeated/reversed directions, one row, L a multiple of the chunk.
            case(1, 6, 2, (1, 16), &[3, 3], 16),
            // One column, G = 3.
            case(1, 3, 3, (13, 1), &[1, 2, 0], 16),
            // G = 1, L = 4^4: both levels exactly full, top level K = 16.
            case(1, 2, 1, (16, 16), &[1], 4),
            // A fixture-sized map with the default chunk: L = 70·100, top level K = 28.
            case(1, 4, 4, (70, 100), &[0, 1, 2, 3], 16),
        ],
    );
}

#[test]
fn inlined_body_handles_float16_inputs() {
    let mut cases = vec![
        case(2, 8, 4, (9, 11), &[0, 1, 2, 3], 16),
        case(1, 4, 4, (1, 1), &[3, 2, 1, 0], 16),
    ];
    for c in &mut cases {
        c.fp16 = true;
    }
    run_cases("inlined_body_handles_float16_inputs", &cases);
}

#[test]
fn portable_graph_matches_kernel_on_odd_shapes() {
    run_cases(
        "portable_graph_matches_kernel_on_odd_shapes",
        &odd_portable_cases(Local::Unrolled),
    );
}

#[test]
fn portable_graph_with_closed_form_first_level_matches_kernel_on_odd_shapes() {
    run_cases(
        "portable_graph_with_closed_form_first_level_matches_kernel_on_odd_shapes",
        &odd_portable_cases(Local::ClosedForm),
    );
}

/// Shapes the fixtures do not reach, as portable graphs whose first level uses `local`.
fn odd_portable_cases(local: Local) -> Vec<Case> {
    let mut underflow = case(2, 8, 4, (33, 40), &[0, 1, 2, 3], 16);
    // Δ·A down to about −1000 per step: a_t = exp(Δ·A) underflows to 0 for many steps.
    underflow.a_scale = 40.0;
    [
        // The ClassBlock's L = 1, every direction.
        case(2, 8, 4, (1, 1), &[0, 1, 2, 3], 16),
        // L = 35 with chunk 4: no divisor fits, padded (9 chunks of 4), then 3 chunks of 3.
        case(2, 8, 4, (5, 7), &[0, 1, 2, 3], 4),
        // Tiny's stage shapes, chunks that divide the levels (no padding): 14×14 = 14 chunks of
        // 14; 28×28 = 49 chunks of 16, then 7 of 7; 7×7 = 7 chunks of 7.
        case(1, 8, 4, (14, 14), &[0, 1, 2, 3], 16),
        case(2, 4, 4, (28, 28), &[1, 0, 3, 2], 16),
        case(1, 8, 4, (7, 7), &[2, 3, 0, 1], 16),
        // G = 2, repeated reversed column-major directions, one row (the transpose is a no-op).
        case(1, 6, 2, (1, 16), &[3, 3], 16),
        // One column, G = 3, a direction of each kind but column-major reversed.
        case(1, 3, 3, (13, 1), &[1, 2, 0], 16),
        // Non-square map with every direction: the transposes must swap H and W correctly.
        case(1, 8, 4, (6, 11), &[0, 1, 2, 3], 4),
        // L = 37·111 = 4107 > 16³ with chunk 16: three levels (257, 17, 2 chunks), padded; the
        // middle levels hand entering states down (shifted).
        case(1, 4, 4, (37, 111), &[3, 2, 1, 0], 16),
        underflow,
    ]
    .into_iter()
    .map(|mut c| {
        c.form = Form::Portable(local);
        c
    })
    .collect()
}

#[test]
fn portable_graph_handles_float16_inputs() {
    let mut c = portable(case(2, 8, 4, (9, 11), &[0, 1, 2, 3], 16));
    c.fp16 = true;
    run_cases("portable_graph_handles_float16_inputs", &[c]);
}
