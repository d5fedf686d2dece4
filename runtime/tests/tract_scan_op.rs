//! Smoke test of `gm_ops::tract_op`: a one-node ONNX model (ai.groupmamba::SelectiveScan,
//! symbolic batch "N") built in memory, serialised, loaded by tract-onnx with the op
//! registered, optimised and run; outputs must equal the CPU kernel called directly.

use gm_ops::tract_op::SelectiveScanOp;
use gm_ops::{selective_scan_to_vec, Direction, ScanInputs, ScanShape, DOMAIN};
use gm_runtime::testing::{random, ScanModel, SCAN_NODE};
use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::*;

const FLOAT16: i32 = DataType::Float16 as i32;

/// Serialises the model, reads it back through tract-onnx and optimises it.
fn load(spec: &ScanModel) -> TractResult<TypedModel> {
    let bytes = spec.model().encode_to_vec();
    let mut onnx = tract_onnx::onnx();
    gm_ops::tract_op::register(&mut onnx);
    onnx.model_for_read(&mut bytes.as_slice())?.into_optimized()
}

struct Case {
    shape: ScanShape,
    data: [Vec<f32>; 7],
}

impl Case {
    fn random(seed: u64, shape: ScanShape) -> Case {
        let big = shape.batch * shape.channels * shape.height * shape.width;
        let small = shape.batch * shape.groups * shape.height * shape.width;
        let c = shape.channels;
        Case {
            shape,
            data: [
                random(seed, big, -2.0, 2.0),
                random(seed + 1, big, -3.0, 1.5),
                random(seed + 2, c, -2.5, -0.05),
                random(seed + 3, small, -1.5, 1.5),
                random(seed + 4, small, -1.5, 1.5),
                random(seed + 5, c, 0.5, 1.5),
                random(seed + 6, c, -4.0, 1.0),
            ],
        }
    }

    fn scan_inputs(&self) -> ScanInputs<'_> {
        let d = &self.data;
        ScanInputs {
            u: &d[0],
            delta: &d[1],
            a: &d[2],
            b: &d[3],
            c: &d[4],
            d: &d[5],
            delta_bias: &d[6],
        }
    }

    fn tensors(&self) -> TractResult<TVec<TValue>> {
        let s = self.shape;
        let big = [s.batch, s.channels, s.height, s.width];
        let small = [s.batch, s.groups, s.height, s.width];
        let shapes: [&[usize]; 7] = [
            &big,
            &big,
            &[s.channels],
            &small,
            &small,
            &[s.channels],
            &[s.channels],
        ];
        shapes
            .iter()
            .zip(&self.data)
            .map(|(shape, data)| Ok(Tensor::from_shape(shape, data)?.into_tvalue()))
            .collect()
    }
}

fn directions(values: &[i64]) -> Vec<Direction> {
    Direction::parse_list(values).unwrap()
}

#[test]
fn one_node_model_matches_cpu_kernel_with_symbolic_batch() -> TractResult<()> {
    let dirs = [0, 1, 2, 3];
    let (c, h, w) = (8usize, 5usize, 7usize);
    let model = load(&ScanModel::new(c as i64, h as i64, w as i64, &dirs))?;

    // the batch stays symbolic through into_optimized, and our op is what runs
    let out = model.output_fact(0)?;
    assert_eq!(out.datum_type, f32::datum_type());
    assert_eq!(out.rank(), 4);
    assert!(
        out.shape[0].to_i64().is_err(),
        "batch dim was made concrete: {:?}",
        out.shape
    );
    assert_eq!(format!("{}", out.shape[0]), "N");
    assert_eq!(
        out.shape[1..]
            .iter()
            .map(|d| d.to_i64().unwrap())
            .collect::<Vec<_>>(),
        [c as i64, h as i64, w as i64]
    );
    let scan_nodes: Vec<_> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<SelectiveScanOp>())
        .collect();
    assert_eq!(scan_nodes.len(), 1);
    assert_eq!(scan_nodes[0].name, SCAN_NODE);

    let runnable = model.into_runnable()?;
    for (batch, seed) in [(2usize, 11u64), (3, 23), (1, 5)] {
        let shape = ScanShape {
            batch,
            channels: c,
            groups: 4,
            height: h,
            width: w,
        };
        let case = Case::random(seed, shape);
        let outputs = runnable.run(case.tensors()?)?;
        assert_eq!(outputs.len(), 1);
        let y = &outputs[0];
        assert_eq!(y.shape(), [batch, c, h, w]);
        let view = y.try_as_plain_ram()?;
        let got = view.as_slice::<f32>()?;
        let expected = selective_scan_to_vec(&shape, &directions(&dirs), case.scan_inputs())?;
        assert!(
            got == expected.as_slice(),
            "tract output differs from the CPU kernel (batch {batch})"
        );
    }
    Ok(())
}

#[test]
fn float16_is_converted_at_the_boundary() -> TractResult<()> {
    let dirs = [3, 1];
    let (c, h, w) = (4usize, 3usize, 4usize);
    let spec = ScanModel {
        elem_type: FLOAT16,
        ..ScanModel::new(c as i64, h as i64, w as i64, &dirs)
    };
    let model = load(&spec)?;
    assert_eq!(model.output_fact(0)?.datum_type, f16::datum_type());
    let shape = ScanShape {
        batch: 2,
        channels: c,
        groups: 2,
        height: h,
        width: w,
    };
    let mut case = Case::random(77, shape);
    // make the f32 reference see exactly the f16 values
    for ix in [0, 1, 3, 4] {
        let t = Tensor::from_shape(&[case.data[ix].len()], &case.data[ix])?;
        let rounded = t.cast_to::<f16>()?.cast_to::<f32>()?.into_owned();
        case.data[ix] = rounded.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    }
    let inputs = case
        .tensors()?
        .into_iter()
        .enumerate()
        .map(|(ix, t)| {
            Ok(if [0, 1, 3, 4].contains(&ix) {
                t.cast_to::<f16>()?.into_owned().into_tvalue()
            } else {
                t
            })
        })
        .collect::<TractResult<TVec<_>>>()?;
    let y = model.into_runnable()?.run(inputs)?.remove(0);
    assert_eq!(y.datum_type(), f16::datum_type());
    let expected = selective_scan_to_vec(&shape, &directions(&dirs), case.scan_inputs())?;
    let expected = Tensor::from_shape(&[2, c, h, w], &expected)?
        .cast_to::<f16>()?
        .into_owned();
    assert_eq!(*y, expected);
    Ok(())
}

/// The whole error chain on one line (`{:#}`: every context, outermost first).
fn load_error(spec: &ScanModel) -> String {
    match load(spec) {
        Ok(_) => panic!("model loaded but should have been refused"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn wrong_domain_is_refused_naming_the_node() {
    let spec = ScanModel {
        domain: "com.example",
        ..ScanModel::new(4, 2, 3, &[0, 1, 2, 3])
    };
    let err = load_error(&spec);
    println!("wrong domain: {err}");
    assert!(err.contains(SCAN_NODE), "{err}");
    assert!(err.contains("com.example") && err.contains(DOMAIN), "{err}");

    let spec = ScanModel {
        domain: "",
        ..ScanModel::new(4, 2, 3, &[0, 1, 2, 3])
    };
    let err = load_error(&spec);
    assert!(err.contains(SCAN_NODE) && err.contains("domain"), "{err}");
}

#[test]
fn bad_directions_are_refused_naming_the_node() {
    let err = load_error(&ScanModel::new(4, 2, 3, &[0, 1, 7, 3]));
    println!("bad direction: {err}");
    assert!(err.contains(SCAN_NODE), "{err}");
    assert!(err.contains("directions") && err.contains("= 7"), "{err}");

    let err = load_error(&ScanModel::new(4, 2, 3, &[-1]));
    assert!(err.contains(SCAN_NODE) && err.contains("-1"), "{err}");

    let spec = ScanModel {
        directions: Some(vec![]),
        groups: 1,
        ..ScanModel::new(4, 2, 3, &[0])
    };
    let err = load_error(&spec);
    assert!(err.contains(SCAN_NODE) && err.contains("empty"), "{err}");

    let spec = ScanModel {
        directions: None,
        ..ScanModel::new(4, 2, 3, &[0])
    };
    let err = load_error(&spec);
    println!("missing directions: {err}");
    assert!(err.contains(SCAN_NODE) && err.contains("missing"), "{err}");
}

#[test]
fn opset_import_and_group_count_are_checked() {
    let spec = ScanModel {
        import: None,
        ..ScanModel::new(4, 2, 3, &[0, 1, 2, 3])
    };
    let err = load_error(&spec);
    println!("no opset import: {err}");
    assert!(
        err.contains(SCAN_NODE) && err.contains("opset_import"),
        "{err}"
    );

    let spec = ScanModel {
        import: Some(2),
        ..ScanModel::new(4, 2, 3, &[0, 1, 2, 3])
    };
    let err = load_error(&spec);
    assert!(
        err.contains(SCAN_NODE) && err.contains("version 2"),
        "{err}"
    );

    // three directions for a B with four groups
    let spec = ScanModel {
        groups: 4,
        ..ScanModel::new(4, 2, 3, &[0, 1, 2])
    };
    let err = load_error(&spec);
    println!("group mismatch: {err}");
    assert!(err.contains(SCAN_NODE), "{err}");
    assert!(
        err.contains("4 groups") && err.contains("3 entries"),
        "{err}"
    );

    // C = 6 channels, G = 4 groups
    let err = load_error(&ScanModel::new(6, 2, 3, &[0, 1, 2, 3]));
    println!("C not divisible by G: {err}");
    assert!(
        err.contains(SCAN_NODE) && err.contains("not divisible"),
        "{err}"
    );
}
