//! Parameter specifications: every state_dict key the official model has, with its shape, whether
//! it is a learnable parameter or a buffer, and how to initialise it when no checkpoint is given.
//!
//! One list serves three purposes: strict checkpoint validation, the parameter count, and seeded
//! random weights. Names are the official module paths, so a key points at the code consuming it.

use std::collections::BTreeMap;

use crate::tensor::Tensor;
use crate::weights::ExpectedTensor;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// N(0, std²), truncated at ±2 (timm `trunc_normal_` with absolute bounds).
    TruncNormal(f64),
    /// N(0, std²).
    Normal(f64),
    /// U(−bound, bound).
    Uniform(f64),
    /// dt projection bias: inverse softplus of dt ~ logU[1e-3, 1e-1] (floor 1e-4), as SS2D does.
    DtBias,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Learnable; counted by `parameters()`.
    Parameter,
    /// Running statistics: in the state_dict, not counted as parameters.
    Buffer,
    /// `num_batches_tracked`: present in official files but unused at inference; may be absent.
    OptionalBuffer,
}

#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub init: Init,
}

/// Collects specs under a module path prefix (`block1.0.attn.mamba_g1`).
#[derive(Default)]
pub struct Params {
    prefix: Vec<String>,
    pub specs: Vec<ParamSpec>,
}

impl Params {
    pub fn scoped(&mut self, name: &str, f: impl FnOnce(&mut Self)) {
        self.prefix.push(name.to_string());
        f(self);
        self.prefix.pop();
    }

    fn push(&mut self, name: &str, shape: &[usize], kind: ParamKind, init: Init) {
        let mut full = self.prefix.join(".");
        if !full.is_empty() {
            full.push('.');
        }
        full.push_str(name);
        self.specs.push(ParamSpec {
            name: full,
            shape: shape.to_vec(),
            kind,
            init,
        });
    }

    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) {
        self.push(name, shape, ParamKind::Parameter, init);
    }

    /// `nn.Linear(cin, cout)` weights as the official init leaves them.
    pub fn linear(&mut self, name: &str, cin: usize, cout: usize, bias: bool) {
        self.scoped(name, |p| {
            p.param("weight", &[cout, cin], Init::TruncNormal(0.02));
            if bias {
                p.param("bias", &[cout], Init::Zeros);
            }
        });
    }

    /// `nn.Conv2d(cin, cout, k, groups)`, init N(0, 2/fan_out).
    pub fn conv2d(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        groups: usize,
        bias: bool,
    ) {
        let fan_out = (k * k * cout / groups) as f64;
        self.scoped(name, |p| {
            p.param(
                "weight",
                &[cout, cin / groups, k, k],
                Init::Normal((2.0 / fan_out).sqrt()),
            );
            if bias {
                p.param("bias", &[cout], Init::Zeros);
            }
        });
    }

    pub fn layer_norm(&mut self, name: &str, c: usize) {
        self.scoped(name, |p| {
            p.param("weight", &[c], Init::Ones);
            p.param("bias", &[c], Init::Zeros);
        });
    }

    pub fn batch_norm(&mut self, name: &str, c: usize) {
        self.scoped(name, |p| {
            p.param("weight", &[c], Init::Ones);
            p.param("bias", &[c], Init::Zeros);
            p.push("running_mean", &[c], ParamKind::Buffer, Init::Zeros);
            p.push("running_var", &[c], ParamKind::Buffer, Init::Ones);
            p.push(
                "num_batches_tracked",
                &[],
                ParamKind::OptionalBuffer,
                Init::Zeros,
            );
        });
    }
}

/// Number of learnable values, counted as PyTorch's `parameters()` counts them.
pub fn parameter_count(specs: &[ParamSpec]) -> usize {
    specs
        .iter()
        .filter(|s| s.kind == ParamKind::Parameter)
        .map(|s| s.shape.iter().product::<usize>())
        .sum()
}

pub fn expected_tensors(specs: &[ParamSpec]) -> Vec<ExpectedTensor> {
    specs
        .iter()
        .map(|s| ExpectedTensor {
            name: s.name.clone(),
            shape: s.shape.clone(),
            required: s.kind != ParamKind::OptionalBuffer,
        })
        .collect()
}

/// Seeded random weights for every spec (deterministic for a given seed).
pub fn random_weights(specs: &[ParamSpec], seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = SplitMix64(seed);
    specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let data = (0..n).map(|_| sample(s.init, &mut rng) as f32).collect();
            (s.name.clone(), Tensor::new(s.shape.clone(), data))
        })
        .collect()
}

fn sample(init: Init, rng: &mut SplitMix64) -> f64 {
    match init {
        Init::Zeros => 0.0,
        Init::Ones => 1.0,
        Init::Normal(std) => std * rng.normal(),
        Init::TruncNormal(std) => loop {
            let v = std * rng.normal();
            if v.abs() <= 2.0 {
                break v;
            }
        },
        Init::Uniform(bound) => bound * (2.0 * rng.uniform() - 1.0),
        Init::DtBias => {
            let (lo, hi) = (1e-3f64.ln(), 1e-1f64.ln());
            let dt = (lo + (hi - lo) * rng.uniform()).exp().max(1e-4);
            dt + (-(-dt).exp_m1()).ln()
        }
    }
}

/// Small, well-known generator: reproducible random weights need no extra dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
