//! The model's parameter list must be the official state_dict: same key count and the same
//! parameter count as PyTorch's `parameters()` (BatchNorm affine in, running statistics out).

use gm_converter::model::params::parameter_count;
use gm_converter::model::{GroupMamba, ModelConfig};

fn counts(variant: &str) -> (usize, usize) {
    let specs = GroupMamba::new(ModelConfig::variant(variant).unwrap())
        .params()
        .specs;
    (parameter_count(&specs), specs.len())
}

#[test]
fn tiny_matches_official_counts() {
    assert_eq!(counts("tiny"), (23_361_917, 1266));
}

#[test]
fn small_matches_official_counts() {
    assert_eq!(counts("small"), (34_781_555, 1693));
}

#[test]
fn base_matches_official_counts() {
    assert_eq!(counts("base"), (57_150_838, 2120));
}

#[test]
fn fixture_config_matches_fixture_counts() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/parity/custom-64x64/config.json");
    let cfg = ModelConfig::from_file(&path).unwrap();
    let specs = GroupMamba::new(cfg).params().specs;
    assert_eq!((parameter_count(&specs), specs.len()), (2_683_196, 412));
}
