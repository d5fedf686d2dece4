//! `Block_mamba` (a stage block) and `ClassBlock` (the head's block), with their FFNs.

use gm_ops::dwconv::{Activation, Layout};

use super::config::LayerDims;
use super::emit::Emitter;
use super::layer::GroupMambaLayer;
use super::params::Params;
use crate::onnx::Value;

/// Block and ClassBlock LayerNorms use the model's `norm_layer`, eps 1e-6.
pub const BLOCK_NORM_EPS: f32 = 1e-6;

/// `Block_mamba`: x + GroupMambaLayer(x), then x + PVT2FFN(norm2(x)) (no norm before the layer).
pub struct Block {
    pub layer: GroupMambaLayer,
    pub ffn_hidden: usize,
}

impl Block {
    pub fn new(channels: usize, mlp_ratio: usize) -> Self {
        Self {
            layer: GroupMambaLayer {
                dims: LayerDims::new(channels),
            },
            ffn_hidden: channels * mlp_ratio,
        }
    }

    pub fn params(&self, p: &mut Params) {
        let c = self.layer.dims.channels;
        p.layer_norm("norm2", c);
        p.scoped("attn", |p| self.layer.params(p));
        p.scoped("mlp", |p| {
            p.linear("fc1", c, self.ffn_hidden, true);
            p.conv2d(
                "dwconv.dwconv",
                self.ffn_hidden,
                self.ffn_hidden,
                3,
                self.ffn_hidden,
                true,
            );
            p.linear("fc2", self.ffn_hidden, c, true);
        });
    }

    /// Tokens (B, L, C) of an `h` × `w` map → tokens (B, L, C).
    pub fn emit(&self, e: &mut Emitter, x: &Value, h: usize, w: usize) -> Value {
        let c = self.layer.dims.channels;
        let tokens = [h * w, c];
        let attn = e.scoped("attn", |e| self.layer.emit(e, x, h, w));
        let attn = e.debug_output(&attn, &format!("{}.attn", e.path()), &tokens);
        let x = e.add(x, &attn);
        let n = e.layer_norm(&x, "norm2", BLOCK_NORM_EPS);
        let mlp = e.scoped("mlp", |e| self.emit_ffn(e, &n, h, w));
        let mlp = e.debug_output(&mlp, &format!("{}.mlp", e.path()), &tokens);
        let x = e.add(&x, &mlp);
        e.debug_output(&x, &e.path(), &tokens)
    }

    /// `PVT2FFN`: fc1 → depthwise 3×3 conv on the map → GELU → fc2.
    ///
    /// Standard: computed channels-first ((B, C, L) = ONNX Conv's layout) so that only the narrow
    /// C-wide tokens are transposed, never the r·C-wide hidden activations. With fused operators,
    /// on tokens throughout: fc1 without its bias, then one channels-last `DepthwiseConv` (fc1's
    /// bias as its input bias, the conv's bias, GELU) on the (B, H, W, r·C) view of fc1's output,
    /// then fc2 — no transposes at all.
    fn emit_ffn(&self, e: &mut Emitter, x: &Value, h: usize, w: usize) -> Value {
        let hidden = self.ffn_hidden as i64;
        let l = (h * w) as i64;
        if e.fused_ops {
            let y = e.linear_without_bias(x, "fc1");
            let y = e.reshape(&y, &[0, h as i64, w as i64, hidden]);
            let fc1_bias = e.scoped("fc1", |e| e.tensor("bias"));
            let (weight, bias) =
                e.scoped("dwconv.dwconv", |e| (e.tensor("weight"), e.tensor("bias")));
            let y = e.depthwise_conv(
                &y,
                weight,
                bias,
                Some(fc1_bias),
                Activation::Gelu,
                Layout::ChannelsLast,
            );
            let y = e.reshape(&y, &[0, l, hidden]);
            return e.linear(&y, "fc2");
        }
        let xt = e.transpose(x, &[0, 2, 1]);
        let y = channels_first_linear(e, &xt, "fc1");
        let y = e.reshape(&y, &[0, hidden, h as i64, w as i64]);
        let y = e.conv2d(&y, "dwconv.dwconv", 1, 1, self.ffn_hidden);
        let y = e.reshape(&y, &[0, hidden, l]);
        let y = e.gelu(&y);
        let y = channels_first_linear(e, &y, "fc2");
        e.transpose(&y, &[0, 2, 1])
    }
}

/// `nn.Linear` without its bias applied to channels-first activations (B, Cin, L): W @ x.
fn channels_first_matmul(e: &mut Emitter, x: &Value, module: &str) -> Value {
    e.scoped(module, |e| {
        let w = e.weight("weight");
        e.g.op("MatMul", &[&w, x], &[])
    })
}

/// `nn.Linear` applied to channels-first activations (B, Cin, L): W @ x + b[:, None].
fn channels_first_linear(e: &mut Emitter, x: &Value, module: &str) -> Value {
    let y = channels_first_matmul(e, x, module);
    e.scoped(module, |e| {
        let b = e.tensor("bias");
        let b = crate::tensor::Tensor::new(vec![b.numel(), 1], b.data.clone());
        let b = e.constant("bias_column", &b);
        e.add(&y, &b)
    })
}

/// `ClassBlock`: cls + norm1(GroupMambaLayer(cls)) (post-norm), then cls + Mlp(norm2(cls)).
/// Runs on the class token alone as a 1×1 map.
pub struct ClassBlock {
    pub layer: GroupMambaLayer,
    pub mlp_hidden: usize,
}

impl ClassBlock {
    pub fn new(channels: usize, mlp_ratio: usize) -> Self {
        Self {
            layer: GroupMambaLayer {
                dims: LayerDims::new(channels),
            },
            mlp_hidden: channels * mlp_ratio,
        }
    }

    pub fn params(&self, p: &mut Params) {
        let c = self.layer.dims.channels;
        p.layer_norm("norm1", c);
        p.layer_norm("norm2", c);
        p.scoped("attn", |p| self.layer.params(p));
        p.scoped("mlp", |p| {
            p.linear("fc1", c, self.mlp_hidden, true);
            p.linear("fc2", self.mlp_hidden, c, true);
        });
    }

    /// Class token (B, 1, C) → (B, 1, C).
    pub fn emit(&self, e: &mut Emitter, cls: &Value) -> Value {
        let attn = e.scoped("attn", |e| self.layer.emit(e, cls, 1, 1));
        let attn = e.layer_norm(&attn, "norm1", BLOCK_NORM_EPS);
        let cls = e.add(cls, &attn);
        let n = e.layer_norm(&cls, "norm2", BLOCK_NORM_EPS);
        let mlp = e.scoped("mlp", |e| {
            let y = e.linear(&n, "fc1");
            let y = e.gelu(&y);
            e.linear(&y, "fc2")
        });
        e.add(&cls, &mlp)
    }
}
