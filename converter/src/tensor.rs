//! A plain host tensor: row-major f32 values with a shape. Weights arrive in this form from every
//! checkpoint format and leave in it towards the graph's initializers.

/// Row-major f32 tensor. `shape == []` is a scalar holding one value.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor data length does not match shape {shape:?}"
        );
        Self { shape, data }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The same values as one axis (per-channel parameters stored (1, C) or (C, 1), …).
    pub fn flattened(&self) -> Tensor {
        Tensor::new(vec![self.numel()], self.data.clone())
    }

    /// Every value times `factor` (a constant folded into a weight at export, in float32).
    pub fn scaled(&self, factor: f32) -> Tensor {
        Tensor::new(
            self.shape.clone(),
            self.data.iter().map(|v| v * factor).collect(),
        )
    }
}
