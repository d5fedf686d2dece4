//! Smoke test of `gm_ops::tract_op`: a one-node ONNX model (ai.groupmamba::SelectiveScan,
//! symbolic batch "N") built in memory, serialised, loaded by tract-onnx with the op
//! registered, optimised and run; outputs must equal the CPU kernel called directly.

use gm_ops::tract_op::SelectiveScanOp;
use gm_ops::{selective_scan_to_vec, Direction, ScanInputs, ScanShape, DOMAIN};
use gm_runtime::testing::random;
use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::*;

const NODE: &str = "block1.0.scan";
const FLOAT: i32 = DataType::Float as i32;
const FLOAT16: i32 = DataType::Float16 as i32;

#[derive(Clone, Copy)]
enum Dim {
    Sym(&'static str),
    Val(i64),
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::dimension::Value;
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match *d {
                Dim::Sym(s) => Value::DimParam(s.into()),
                Dim::Val(v) => Value::DimValue(v),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What to build: sizes, attribute, and the things the error tests spoil.
#[derive(Clone)]
struct Spec {
    channels: i64,
    groups: i64,
    height: i64,
    width: i64,
    directions: Option<Vec<i64>>,
    domain: &'static str,
    import: Option<i64>,
    elem_type: i32,
}

impl Spec {
    fn new(channels: i64, height: i64, width: i64, directions: &[i64]) -> Spec {
        Spec {
            channels,
            groups: directions.len() as i64,
            height,
            width,
            directions: Some(directions.to_vec()),
            domain: DOMAIN,
            import: Some(1),
            elem_type: FLOAT,
        }
    }

    fn model(&self) -> pb::ModelProto {
        let n = Dim::Sym("N");
        let (c, g, h, w) = (
            Dim::Val(self.channels),
            Dim::Val(self.groups),
            Dim::Val(self.height),
            Dim::Val(self.width),
        );
        let t = self.elem_type;
        let inputs = vec![
            value_info("u", t, &[n, c, h, w]),
            value_info("delta", t, &[n, c, h, w]),
            value_info("A", FLOAT, &[c]),
            value_info("B", t, &[n, g, h, w]),
            value_info("C", t, &[n, g, h, w]),
            value_info("D", FLOAT, &[c]),
            value_info("delta_bias", FLOAT, &[c]),
        ];
        let attribute = self
            .directions
            .iter()
            .map(|dirs| pb::AttributeProto {
                name: "directions".into(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ints: dirs.clone(),
                ..Default::default()
            })
            .collect();
        let node = pb::NodeProto {
            name: NODE.into(),
            op_type: "SelectiveScan".into(),
            domain: self.domain.into(),
            input: inputs.iter().map(|i| i.name.clone()).collect(),
            output: vec!["y".into()],
            attribute,
            ..Default::default()
        };
        let mut opset_import = vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }];
        if let Some(version) = self.import {
            opset_import.push(pb::OperatorSetIdProto {
                domain: DOMAIN.into(),
                version,
            });
        }
        pb::ModelProto {
            ir_version: 8,
            opset_import,
            producer_name: "gm-runtime tract_scan_op test".into(),
            graph: Some(pb::GraphProto {
                name: "selective_scan".into(),
                node: vec![node],
                input: inputs,
                output: vec![value_info("y", t, &[n, c, h, w])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Serialises the model, reads it back through tract-onnx and optimises it.
    fn load(&self) -> TractResult<TypedModel> {
        let bytes = self.model().encode_to_vec();
        let mut onnx = tract_onnx::onnx();
        gm_ops::tract_op::register(&mut onnx);
        onnx.model_for_read(&mut bytes.as_slice())?.into_optimized()
    }
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
    let model = Spec::new(c as i64, h as i64, w as i64, &dirs).load()?;

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
    assert_eq!(scan_nodes[0].name, NODE);

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
    let spec = Spec {
        elem_type: FLOAT16,
        ..Spec::new(c as i64, h as i64, w as i64, &dirs)
    };
    let model = spec.load()?;
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
fn load_error(spec: &Spec) -> String {
    match spec.load() {
        Ok(_) => panic!("model loaded but should have been refused"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn wrong_domain_is_refused_naming_the_node() {
    let spec = Spec {
        domain: "com.example",
        ..Spec::new(4, 2, 3, &[0, 1, 2, 3])
    };
    let err = load_error(&spec);
    println!("wrong domain: {err}");
    assert!(err.contains(NODE), "{err}");
    assert!(err.contains("com.example") && err.contains(DOMAIN), "{err}");

    let spec = Spec {
        domain: "",
        ..Spec::new(4, 2, 3, &[0, 1, 2, 3])
    };
    let err = load_error(&spec);
    assert!(err.contains(NODE) && err.contains("domain"), "{err}");
}

#[test]
fn bad_directions_are_refused_naming_the_node() {
    let err = load_error(&Spec::new(4, 2, 3, &[0, 1, 7, 3]));
    println!("bad direction: {err}");
    assert!(err.contains(NODE), "{err}");
    assert!(err.contains("directions") && err.contains("= 7"), "{err}");

    let err = load_error(&Spec::new(4, 2, 3, &[-1]));
    assert!(err.contains(NODE) && err.contains("-1"), "{err}");

    let spec = Spec {
        directions: Some(vec![]),
        groups: 1,
        ..Spec::new(4, 2, 3, &[0])
    };
    let err = load_error(&spec);
    assert!(err.contains(NODE) && err.contains("empty"), "{err}");

    let spec = Spec {
        directions: None,
        ..Spec::new(4, 2, 3, &[0])
    };
    let err = load_error(&spec);
    println!("missing directions: {err}");
    assert!(err.contains(NODE) && err.contains("missing"), "{err}");
}

#[test]
fn opset_import_and_group_count_are_checked() {
    let spec = Spec {
        import: None,
        ..Spec::new(4, 2, 3, &[0, 1, 2, 3])
    };
    let err = load_error(&spec);
    println!("no opset import: {err}");
    assert!(err.contains(NODE) && err.contains("opset_import"), "{err}");

    let spec = Spec {
        import: Some(2),
        ..Spec::new(4, 2, 3, &[0, 1, 2, 3])
    };
    let err = load_error(&spec);
    assert!(err.contains(NODE) && err.contains("version 2"), "{err}");

    // three directions for a B with four groups
    let spec = Spec {
        groups: 4,
        ..Spec::new(4, 2, 3, &[0, 1, 2])
    };
    let err = load_error(&spec);
    println!("group mismatch: {err}");
    assert!(err.contains(NODE), "{err}");
    assert!(
        err.contains("4 groups") && err.contains("3 entries"),
        "{err}"
    );

    // C = 6 channels, G = 4 groups
    let err = load_error(&Spec::new(6, 2, 3, &[0, 1, 2, 3]));
    println!("C not divisible by G: {err}");
    assert!(err.contains(NODE) && err.contains("not divisible"), "{err}");
}
