//! The whole GroupMamba network: stem, four stages with downsampling, the class-token head.

use super::block::{Block, ClassBlock, BLOCK_NORM_EPS};
use super::config::{stage_sizes, ModelConfig};
use super::emit::Emitter;
use super::params::Params;
use crate::onnx::Value;

/// Stem, downsampling and `patch_embed` LayerNorms are plain `nn.LayerNorm` (eps 1e-5).
const EMBED_NORM_EPS: f32 = 1e-5;
const BATCH_NORM_EPS: f64 = 1e-5;

pub struct GroupMamba {
    pub config: ModelConfig,
}

impl GroupMamba {
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }

    fn block(&self, stage: usize) -> Block {
        Block::new(self.config.embed_dims[stage], self.config.mlp_ratios[stage])
    }

    fn class_block(&self) -> ClassBlock {
        ClassBlock::new(self.config.embed_dims[3], self.config.mlp_ratios[3])
    }

    /// Every state_dict entry, in the official file's order.
    pub fn params(&self) -> Params {
        let cfg = &self.config;
        let mut p = Params::default();
        let (h, dims) = (cfg.stem_hidden_dim, cfg.embed_dims);
        p.scoped("patch_embed1", |p| {
            p.conv2d("conv.0", cfg.in_chans, h, 7, 1, false);
            p.batch_norm("conv.1", h);
            p.conv2d("conv.3", h, h, 3, 1, false);
            p.batch_norm("conv.4", h);
            p.conv2d("conv.6", h, h, 3, 1, false);
            p.batch_norm("conv.7", h);
            p.conv2d("proj", h, dims[0], 3, 1, true);
            p.layer_norm("norm", dims[0]);
        });
        for stage in 0..4 {
            if stage > 0 {
                p.scoped(&format!("patch_embed{}", stage + 1), |p| {
                    p.conv2d("proj", dims[stage - 1], dims[stage], 3, 1, true);
                    p.layer_norm("norm", dims[stage]);
                });
            }
            for j in 0..cfg.depths[stage] {
                p.scoped(&format!("block{}.{j}", stage + 1), |p| {
                    self.block(stage).params(p)
                });
            }
            p.layer_norm(&format!("norm{}", stage + 1), dims[stage]);
        }
        p.scoped("post_network.0", |p| self.class_block().params(p));
        p.linear("head", dims[3], cfg.num_classes, true);
        if cfg.distillation {
            p.linear("dist_head", dims[3], cfg.num_classes, true);
        }
        p
    }

    /// Images (B, in_chans, height, width) → logits (B, num_classes).
    pub fn emit(&self, e: &mut Emitter, images: &Value, height: usize, width: usize) -> Value {
        let cfg = &self.config;
        let sizes = stage_sizes(height, width);
        let dims = cfg.embed_dims;

        let mut x = e.scoped("patch_embed1", |e| {
            let x = e.conv2d_bn(images, "conv.0", "conv.1", 2, 3, BATCH_NORM_EPS);
            let x = e.relu(&x);
            let x = e.conv2d_bn(&x, "conv.3", "conv.4", 1, 1, BATCH_NORM_EPS);
            let x = e.relu(&x);
            let x = e.conv2d_bn(&x, "conv.6", "conv.7", 1, 1, BATCH_NORM_EPS);
            let x = e.relu(&x);
            let x = e.conv2d(&x, "proj", 2, 1, 1);
            to_tokens(e, &x, dims[0], sizes[0])
        });
        x = e.scoped("patch_embed1", |e| e.layer_norm(&x, "norm", EMBED_NORM_EPS));
        let (h0, w0) = sizes[0];
        x = e.debug_output(&x, "stem", &[h0 * w0, dims[0]]);

        for stage in 0..4 {
            let (h, w) = sizes[stage];
            let c = dims[stage];
            if stage > 0 {
                x = e.scoped(&format!("patch_embed{}", stage + 1), |e| {
                    let y = e.conv2d(&x, "proj", 2, 1, 1);
                    let y = to_tokens(e, &y, c, (h, w));
                    e.layer_norm(&y, "norm", EMBED_NORM_EPS)
                });
            }
            for j in 0..cfg.depths[stage] {
                let block = self.block(stage);
                x = e.scoped(&format!("block{}.{j}", stage + 1), |e| {
                    block.emit(e, &x, h, w)
                });
            }
            let name = format!("stage{}", stage + 1);
            if stage < 3 {
                // norm{i}, then back to NCHW for the next stage's downsampling convolution.
                let y = e.layer_norm(&x, &format!("norm{}", stage + 1), BLOCK_NORM_EPS);
                let y = to_map(e, &y, c, (h, w));
                x = e.debug_output(&y, &name, &[c, h, w]);
            } else if e.debug_enabled() {
                // Stage 4 is pooled un-normalised; expose it as a map for comparison only.
                let y = to_map(e, &x, c, (h, w));
                e.debug_output(&y, &name, &[c, h, w]);
            }
        }

        // Class token = mean of the stage-4 tokens; ClassBlock; norm4; two heads averaged.
        let c4 = dims[3] as i64;
        let cls = e.g.op(
            "ReduceMean",
            &[&x],
            &[
                ("axes", crate::onnx::Attr::Ints(vec![1])),
                ("keepdims", crate::onnx::Attr::Int(1)),
            ],
        );
        let cls = e.scoped("post_network.0", |e| self.class_block().emit(e, &cls));
        let cls = e.reshape(&cls, &[0, c4]);
        let cls = e.debug_output(&cls, "cls_block", &[dims[3]]);
        let f = e.layer_norm(&cls, "norm4", BLOCK_NORM_EPS);
        let f = e.debug_output(&f, "features", &[dims[3]]);
        let head = e.linear(&f, "head");
        if !cfg.distillation {
            return head;
        }
        let head = e.debug_output(&head, "logits_head", &[cfg.num_classes]);
        let dist = e.linear(&f, "dist_head");
        let dist = e.debug_output(&dist, "logits_dist", &[cfg.num_classes]);
        let sum = e.add(&head, &dist);
        let half = e.scalar(0.5);
        e.mul(&sum, &half)
    }
}

/// NCHW map (B, C, H, W) → tokens (B, H·W, C).
fn to_tokens(e: &mut Emitter, x: &Value, c: usize, (h, w): (usize, usize)) -> Value {
    let y = e.reshape(x, &[0, c as i64, (h * w) as i64]);
    e.transpose(&y, &[0, 2, 1])
}

/// Tokens (B, H·W, C) → NCHW map (B, C, H, W).
fn to_map(e: &mut Emitter, x: &Value, c: usize, (h, w): (usize, usize)) -> Value {
    let y = e.transpose(x, &[0, 2, 1]);
    e.reshape(&y, &[0, c as i64, h as i64, w as i64])
}
