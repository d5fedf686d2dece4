//! `ai.groupmamba::DepthwiseConv` (version 1): the contract as code (names, attributes,
//! shapes, errors) and the float32 reference kernel every CPU adapter calls.
//!
//! What it computes (normative text: `plugins/SPEC.md` §9): a depthwise K×K convolution
//! (stride 1, zero padding K/2, so the output keeps `X`'s size) with its bias, an optional
//! per-channel bias added to `X` before the convolution, and an activation:
//!
//! ```text
//! acc[n, c, h, w] = B[c] + Σ_{i, j < K} W[c, 0, i, j] · x̃[n, c, h + i − K/2, w + j − K/2]
//! x̃ = X + InputBias[c] inside the image, 0 outside (the padding stays zero)
//! y = act(acc), act ∈ {identity, SiLU, exact (erf) GELU}
//! ```
//!
//! `X` and `Y` are `[N, C, H, W]`, or `[N, H, W, C]` with `channels_last` = 1 ([`Layout`]): the
//! FFN's hidden activations are tokens `[N, L, C]` on both sides of the conv, which in that layout
//! need no transposes, and on GPUs a channels-last kernel loads and stores whole vectors of
//! channels.
//!
//! Why an op of our own: GroupMamba runs a depthwise conv + bias + SiLU in every Mamba layer and
//! `Linear` bias + depthwise conv + bias + GELU in every FFN; on ONNX Runtime's CUDA EP, cuDNN's
//! depthwise conv, its separate bias-add kernel and the activation are three passes over the
//! feature map (about a quarter of GroupMamba-Tiny's FP16 GPU time at batch 128), where one
//! kernel reading `X` once and writing `Y` once does it all. `InputBias` exists because the
//! preceding `Linear`'s bias commutes into the conv only inside the image: folding it into `B`
//! would be wrong at the borders, adding it to `X` first costs a pass.

use std::fmt;
use std::ops::Range;

/// ONNX `op_type` of the operator (domain [`crate::spec::DOMAIN`], version
/// [`crate::spec::OPSET_VERSION`]).
pub const DWCONV_OP_TYPE: &str = "DepthwiseConv";
/// `string` attribute: the activation applied to the biased convolution, one of
/// [`Activation::ALL`]'s names (default `"none"`).
pub const ATTR_ACTIVATION: &str = "activation";
/// `int` attribute: 1 when `X` and `Y` are channels-last `[N, H, W, C]`, 0 (default) for
/// `[N, C, H, W]`.
pub const ATTR_CHANNELS_LAST: &str = "channels_last";
/// Largest kernel size K the adapters accept (GroupMamba uses 3; the CUDA kernel keeps the
/// K×K taps and a (tile + K − 1)² halo in fast memory, so K is bounded).
pub const MAX_KERNEL: usize = 7;

/// The four inputs of the operator, in node-input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvInput {
    /// `X` `[N, C, H, W]` (or `[N, H, W, C]`, [`Layout::ChannelsLast`]), type T.
    X,
    /// `W` `[C, 1, K, K]`, float32 (the PyTorch `Conv2d(groups=C)` weight layout).
    W,
    /// `B` `[C]`, float32: the convolution's bias.
    B,
    /// `InputBias` (optional) `[C]`, float32: added to `X` inside the image before the
    /// convolution.
    InputBias,
}

impl ConvInput {
    /// All inputs in node-input order.
    pub const ALL: [ConvInput; 4] = [
        ConvInput::X,
        ConvInput::W,
        ConvInput::B,
        ConvInput::InputBias,
    ];

    /// Node-input position.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The input's name in the specification.
    pub fn name(self) -> &'static str {
        match self {
            ConvInput::X => "X",
            ConvInput::W => "W",
            ConvInput::B => "B",
            ConvInput::InputBias => "InputBias",
        }
    }

    /// Whether the input has type T (else it is always float32).
    pub fn is_type_t(self) -> bool {
        matches!(self, ConvInput::X)
    }
}

impl fmt::Display for ConvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The activation applied to the biased convolution (attribute [`ATTR_ACTIVATION`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// `"none"`: `y = acc`.
    #[default]
    None,
    /// `"silu"`: `y = acc · sigmoid(acc)` (`nn.SiLU`, the Mamba layer's conv).
    Silu,
    /// `"gelu"`: `y = acc · Φ(acc) = acc/2 · (1 + erf(acc/√2))`, the exact GELU of `nn.GELU()`
    /// (the FFN's conv), not the tanh approximation.
    Gelu,
}

impl Activation {
    /// All activations, in [`Activation::as_code`] order.
    pub const ALL: [Activation; 3] = [Activation::None, Activation::Silu, Activation::Gelu];

    /// The attribute value naming the activation.
    pub fn name(self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
        }
    }

    /// Parses the attribute value (exact, lower-case names only: a model is written by a tool,
    /// and a misspelling should fail at load time rather than silently mean something).
    pub fn from_name(name: &str) -> Result<Activation, ConvError> {
        Activation::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| ConvError::BadActivation(name.to_string()))
    }

    /// The activation's number in the C ABI of the CUDA kernel: 0 none, 1 SiLU, 2 GELU.
    pub fn as_code(self) -> i32 {
        match self {
            Activation::None => 0,
            Activation::Silu => 1,
            Activation::Gelu => 2,
        }
    }

    /// Applies the activation to one float32 value.
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Silu => crate::norm::silu(v),
            Activation::Gelu => gelu(v),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Memory order of `X` and `Y` (attribute [`ATTR_CHANNELS_LAST`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// `[N, C, H, W]`: each channel's plane contiguous (`channels_last` = 0, the default).
    #[default]
    ChannelsFirst,
    /// `[N, H, W, C]`: each pixel's channels contiguous (`channels_last` = 1), as tokens
    /// `[N, L, C]` reshaped.
    ChannelsLast,
}

impl Layout {
    /// Parses the attribute value: 0 or 1 (absent: 0).
    pub fn from_attribute(value: i64) -> Result<Layout, ConvError> {
        match value {
            0 => Ok(Layout::ChannelsFirst),
            1 => Ok(Layout::ChannelsLast),
            _ => Err(ConvError::BadChannelsLast(value)),
        }
    }

    /// The attribute value: 0 channels-first, 1 channels-last (also the CUDA kernel's flag).
    pub fn as_attribute(self) -> i64 {
        match self {
            Layout::ChannelsFirst => 0,
            Layout::ChannelsLast => 1,
        }
    }

    /// The axis of `X` that holds the channels.
    pub fn channel_axis(self) -> usize {
        match self {
            Layout::ChannelsFirst => 1,
            Layout::ChannelsLast => 3,
        }
    }

    /// `X`'s dimensions in this layout, for messages.
    pub fn dims(self) -> &'static str {
        match self {
            Layout::ChannelsFirst => "[N, C, H, W]",
            Layout::ChannelsLast => "[N, H, W, C]",
        }
    }

    /// `[N, C, H, W]` read from `X`'s shape in this layout (rank 4).
    fn nchw(self, x: [usize; 4]) -> [usize; 4] {
        match self {
            Layout::ChannelsFirst => x,
            Layout::ChannelsLast => [x[0], x[3], x[1], x[2]],
        }
    }
}

/// The node's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConvAttributes {
    pub activation: Activation,
    pub layout: Layout,
}

impl ConvAttributes {
    /// Checks raw attribute values (an absent `activation` is `"none"`, an absent
    /// `channels_last` 0).
    pub fn new(activation: Option<&str>, channels_last: Option<i64>) -> Result<Self, ConvError> {
        let activation = match activation {
            None => Activation::None,
            Some(name) => Activation::from_name(name)?,
        };
        let layout = channels_last.map_or(Ok(Layout::ChannelsFirst), Layout::from_attribute)?;
        Ok(Self { activation, layout })
    }
}

/// Everything that can be wrong with a call of the operator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvError {
    #[error("attribute `activation` = {0:?}: must be \"none\", \"silu\" or \"gelu\"")]
    BadActivation(String),
    #[error("attribute `channels_last` = {0}: must be 0 ([N, C, H, W]) or 1 ([N, H, W, C])")]
    BadChannelsLast(i64),
    #[error("input `X` has shape {0:?}: needs rank 4 {dims}", dims = .1.dims())]
    Rank(Vec<usize>, Layout),
    #[error(
        "input `W` has shape {found:?}, expected [C, 1, K, K] with C = {channels} (from X \
         {x_shape:?})"
    )]
    WeightShape {
        found: Vec<usize>,
        channels: usize,
        x_shape: Vec<usize>,
    },
    #[error(
        "input `W` has a {0}×{0} kernel: K must be odd (padding K/2 on each side keeps the \
         image size)"
    )]
    EvenKernel(usize),
    #[error(
        "input `W` has a {0}×{0} kernel: larger than the {MAX_KERNEL}×{MAX_KERNEL} this \
         implementation supports"
    )]
    KernelTooLarge(usize),
    #[error(
        "input `{input}` has shape {found:?}, expected [C] = {expected:?} (from X {x_shape:?})"
    )]
    Shape {
        input: ConvInput,
        expected: Vec<usize>,
        found: Vec<usize>,
        x_shape: Vec<usize>,
    },
    #[error("input `{input}` holds {found} values, expected {expected}")]
    Length {
        input: ConvInput,
        expected: usize,
        found: usize,
    },
    #[error("output `Y` buffer holds {found} values, expected {expected}")]
    OutputLength { expected: usize, found: usize },
    #[error("planes {planes:?} asked for, but X has N·C = {total} planes")]
    PlaneRange { planes: Range<usize>, total: usize },
    #[error("a range of planes asked for of a channels-last call: planes are channels-first")]
    PlanesOfChannelsLast,
    #[error("the thread pool running the planes failed: {0}")]
    ThreadPool(String),
    #[error("input `{input}` has element type {found}, this implementation accepts {accepted}")]
    UnsupportedType {
        input: ConvInput,
        found: String,
        accepted: &'static str,
    },
}

/// A call's geometry: `batch` × `channels` planes of `height` × `width`, a `kernel` × `kernel`
/// filter per channel, `X` and `Y` in `layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub layout: Layout,
}

impl ConvShape {
    /// Checks the shapes of `X` (in `layout`), `W`, `B` and the optional `InputBias` against
    /// each other.
    pub fn from_input_shapes(
        x: &[usize],
        w: &[usize],
        b: &[usize],
        input_bias: Option<&[usize]>,
        layout: Layout,
    ) -> Result<Self, ConvError> {
        let Ok(&dims) = <&[usize; 4]>::try_from(x) else {
            return Err(ConvError::Rank(x.to_vec(), layout));
        };
        let [batch, channels, height, width] = layout.nchw(dims);
        let kernel = match *w {
            [c, 1, k, k2] if c == channels && k == k2 => k,
            _ => {
                return Err(ConvError::WeightShape {
                    found: w.to_vec(),
                    channels,
                    x_shape: x.to_vec(),
                })
            }
        };
        check_kernel(kernel)?;
        let mismatch = |input: ConvInput, found: &[usize]| {
            (found != [channels]).then(|| ConvError::Shape {
                input,
                expected: vec![channels],
                found: found.to_vec(),
                x_shape: x.to_vec(),
            })
        };
        let checks = [
            mismatch(ConvInput::B, b),
            input_bias.and_then(|ib| mismatch(ConvInput::InputBias, ib)),
        ];
        if let Some(e) = checks.into_iter().flatten().next() {
            return Err(e);
        }
        Ok(Self {
            batch,
            channels,
            height,
            width,
            kernel,
            layout,
        })
    }

    /// The same call with `X` and `Y` channels-first.
    pub fn channels_first(&self) -> ConvShape {
        ConvShape {
            layout: Layout::ChannelsFirst,
            ..*self
        }
    }

    /// Padding on each side, `K / 2`.
    pub fn pad(&self) -> usize {
        self.kernel / 2
    }

    /// Elements of one `[H, W]` plane.
    pub fn plane_len(&self) -> usize {
        self.height * self.width
    }

    /// Number of `(n, c)` planes, `N · C`.
    pub fn planes(&self) -> usize {
        self.batch * self.channels
    }

    /// Elements of `X` (and of `Y`).
    pub fn len(&self) -> usize {
        self.planes() * self.plane_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements of `W`, `C · K · K`.
    pub fn weight_len(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }
}

/// Checks a kernel size K: odd and at most [`MAX_KERNEL`].
pub fn check_kernel(kernel: usize) -> Result<(), ConvError> {
    if kernel.is_multiple_of(2) {
        return Err(ConvError::EvenKernel(kernel));
    }
    if kernel > MAX_KERNEL {
        return Err(ConvError::KernelTooLarge(kernel));
    }
    Ok(())
}

/// The operator's inputs as flat row-major float32 buffers.
#[derive(Debug, Clone, Copy)]
pub struct ConvInputs<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub b: &'a [f32],
    pub input_bias: Option<&'a [f32]>,
}

/// `erfc(x)` in float64 with a fractional error below 1.2e-7 for every x: the Chebyshev fit
/// `erfcc` of Numerical Recipes (Press et al., 2nd ed., §6.2). Rust's std has no erf; this fit
/// is one `exp` and a degree-9 polynomial, and being *relative* it keeps GELU accurate where
/// `1 + erf` cancels (large negative inputs).
fn erfc_f64(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * (-z * z + poly).exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// `erf(x)`, absolute error below 1.2e-7 (see [`erfc`]); evaluated in float64, rounded once.
pub fn erf(x: f32) -> f32 {
    (1.0 - erfc_f64(f64::from(x))) as f32
}

/// `erfc(x) = 1 − erf(x)`, relative error below 1.2e-7; evaluated in float64, rounded once.
pub fn erfc(x: f32) -> f32 {
    erfc_f64(f64::from(x)) as f32
}

/// Exact GELU, `v · Φ(v)` with `Φ(v) = erfc(−v/√2) / 2` (`nn.GELU()`), relative error about
/// 1e-7: written with `erfc` so that negative inputs keep their precision.
pub fn gelu(v: f32) -> f32 {
    let v = f64::from(v);
    (0.5 * v * erfc_f64(-v * std::f64::consts::FRAC_1_SQRT_2)) as f32
}

/// The reference kernel: writes `Y` (float32) for `inputs` of `shape` (either layout).
pub fn depthwise_conv(
    shape: &ConvShape,
    attrs: &ConvAttributes,
    inputs: ConvInputs<'_>,
    y: &mut [f32],
) -> Result<(), ConvError> {
    in_channels_first(shape, inputs, y, |shape, inputs, y| {
        depthwise_conv_planes(shape, attrs, inputs, 0..shape.planes(), y)
    })
}

/// Runs `conv`, which writes a channels-first `Y` for a channels-first call, on a call of
/// either layout: a channels-last `X` is transposed into a channels-first copy, and `conv`'s
/// result transposed back into `y`. The CPU kernels work plane by plane (a plane's taps are
/// neighbours in memory); on CPUs, where channels-last exports are not the fast path, the two
/// copies are the simple price of one implementation of the math.
pub fn in_channels_first(
    shape: &ConvShape,
    inputs: ConvInputs<'_>,
    y: &mut [f32],
    conv: impl FnOnce(&ConvShape, ConvInputs<'_>, &mut [f32]) -> Result<(), ConvError>,
) -> Result<(), ConvError> {
    if shape.layout == Layout::ChannelsFirst {
        return conv(shape, inputs, y);
    }
    // The copies keep the buffers' lengths, so `conv`'s own checks name a wrong X or Y.
    let (pixels, channels) = (shape.plane_len(), shape.channels);
    let x = transpose_images(inputs.x, pixels, channels);
    let mut y_first = vec![0.0f32; y.len()];
    conv(
        &shape.channels_first(),
        ConvInputs { x: &x, ..inputs },
        &mut y_first,
    )?;
    let transposed = transpose_images(&y_first, channels, pixels);
    y.copy_from_slice(&transposed);
    Ok(())
}

/// Each image of `data`, a `rows` × `cols` row-major matrix, transposed.
fn transpose_images(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    let image = rows * cols;
    if image == 0 {
        return out;
    }
    for (src, dst) in data.chunks_exact(image).zip(out.chunks_exact_mut(image)) {
        for (r, row) in src.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                dst[c * rows + r] = v;
            }
        }
    }
    out
}

/// The reference kernel on the `(n, c)` planes `planes` (flat index `n · C + c`) of a
/// channels-first call only: `inputs` are whole, `y` holds just those planes. Lets an adapter
/// split a call over threads (inside [`in_channels_first`] for a channels-last one).
pub fn depthwise_conv_planes(
    shape: &ConvShape,
    attrs: &ConvAttributes,
    inputs: ConvInputs<'_>,
    planes: Range<usize>,
    y: &mut [f32],
) -> Result<(), ConvError> {
    check_kernel(shape.kernel)?;
    if shape.layout != Layout::ChannelsFirst {
        return Err(ConvError::PlanesOfChannelsLast);
    }
    let check = |input: ConvInput, expected: usize, found: usize| {
        (expected != found).then_some(ConvError::Length {
            input,
            expected,
            found,
        })
    };
    let checks = [
        check(ConvInput::X, shape.len(), inputs.x.len()),
        check(ConvInput::W, shape.weight_len(), inputs.w.len()),
        check(ConvInput::B, shape.channels, inputs.b.len()),
        inputs
            .input_bias
            .and_then(|ib| check(ConvInput::InputBias, shape.channels, ib.len())),
    ];
    if let Some(e) = checks.into_iter().flatten().next() {
        return Err(e);
    }
    if planes.end > shape.planes() {
        return Err(ConvError::PlaneRange {
            planes,
            total: shape.planes(),
        });
    }
    let plane = shape.plane_len();
    let expected = planes.len() * plane;
    if y.len() != expected {
        return Err(ConvError::OutputLength {
            expected,
            found: y.len(),
        });
    }
    if plane == 0 {
        return Ok(());
    }
    let k = shape.kernel;
    let mut acc = vec![0.0f32; shape.width];
    for (p, out) in planes.zip(y.chunks_exact_mut(plane)) {
        let c = p % shape.channels;
        conv_plane(
            shape,
            attrs.activation,
            &inputs.x[p * plane..(p + 1) * plane],
            &inputs.w[c * k * k..(c + 1) * k * k],
            inputs.b[c],
            inputs.input_bias.map_or(0.0, |ib| ib[c]),
            &mut acc,
            out,
        );
    }
    Ok(())
}

/// One `[H, W]` plane. Out-of-image taps are skipped by clamping each tap's range of output
/// columns (no per-element bounds test, no padded copy); `acc` is a row of scratch.
#[allow(clippy::too_many_arguments)]
fn conv_plane(
    shape: &ConvShape,
    activation: Activation,
    x: &[f32],
    w: &[f32],
    bias: f32,
    input_bias: f32,
    acc: &mut [f32],
    y: &mut [f32],
) {
    let (height, width, k, pad) = (shape.height, shape.width, shape.kernel, shape.pad());
    for (h, out) in y.chunks_exact_mut(width).enumerate() {
        acc.fill(bias);
        for i in 0..k {
            // Source row h + i − pad, skipped when outside the image.
            let Some(r) = (h + i).checked_sub(pad).filter(|&r| r < height) else {
                continue;
            };
            let row = &x[r * width..(r + 1) * width];
            for j in 0..k {
                let tap = w[i * k + j];
                // Output columns whose source column w + j − pad lies in [0, width).
                let lo = pad.saturating_sub(j);
                let hi = (width + pad).saturating_sub(j).min(width);
                if lo >= hi {
                    continue;
                }
                let src = &row[lo + j - pad..hi + j - pad];
                for (a, &v) in acc[lo..hi].iter_mut().zip(src) {
                    *a += tap * (v + input_bias);
                }
            }
        }
        for (o, &a) in out.iter_mut().zip(acc.iter()) {
            *o = activation.apply(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ConvShape::from_input_shapes` for X in [N, C, H, W].
    fn first(
        x: &[usize],
        w: &[usize],
        b: &[usize],
        ib: Option<&[usize]>,
    ) -> Result<ConvShape, ConvError> {
        ConvShape::from_input_shapes(x, w, b, ib, Layout::ChannelsFirst)
    }

    /// `ConvShape::from_input_shapes` for X in [N, H, W, C].
    fn last(
        x: &[usize],
        w: &[usize],
        b: &[usize],
        ib: Option<&[usize]>,
    ) -> Result<ConvShape, ConvError> {
        ConvShape::from_input_shapes(x, w, b, ib, Layout::ChannelsLast)
    }

    /// Direct transcription of the specification's formula, per output element.
    fn naive(shape: &ConvShape, act: Activation, inputs: ConvInputs<'_>) -> Vec<f32> {
        let (n, c, h, w, k) = (
            shape.batch,
            shape.channels,
            shape.height,
            shape.width,
            shape.kernel,
        );
        let p = (k / 2) as isize;
        let mut y = vec![0.0; shape.len()];
        for b in 0..n {
            for ch in 0..c {
                let plane = (b * c + ch) * h * w;
                for r in 0..h {
                    for s in 0..w {
                        let mut acc = inputs.b[ch];
                        for i in 0..k {
                            for j in 0..k {
                                let (rr, ss) =
                                    (r as isize + i as isize - p, s as isize + j as isize - p);
                                if rr < 0 || ss < 0 || rr >= h as isize || ss >= w as isize {
                                    continue;
                                }
                                let v = inputs.x[plane + rr as usize * w + ss as usize]
                                    + inputs.input_bias.map_or(0.0, |ib| ib[ch]);
                                acc += inputs.w[(ch * k + i) * k + j] * v;
                            }
                        }
                        y[plane + r * w + s] = act.apply(acc);
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (i as f32 * 0.7 + seed).sin() * 1.5)
            .collect()
    }

    fn run(shape: &ConvShape, act: Activation, inputs: ConvInputs<'_>) -> Vec<f32> {
        let mut y = vec![f32::NAN; shape.len()];
        let attrs = ConvAttributes {
            activation: act,
            ..ConvAttributes::default()
        };
        depthwise_conv(shape, &attrs, inputs, &mut y).unwrap();
        y
    }

    #[test]
    fn hand_computed_3x3_with_zero_padding_at_the_edges() {
        // One 3×3 plane 1..9, the kernel [[0,1,0],[1,1,1],[0,1,0]] (a "plus"), bias 10.
        let shape = first(&[1, 1, 3, 3], &[1, 1, 3, 3], &[1], None).unwrap();
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let w = [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0];
        let inputs = ConvInputs {
            x: &x,
            w: &w,
            b: &[10.0],
            input_bias: None,
        };
        let y = run(&shape, Activation::None, inputs);
        // Centre: 2+4+5+6+8 = 25; corner (0,0): 1+2+4 = 7; edge (0,1): 1+2+3+5 = 11; …
        let expected = [7.0, 11.0, 11.0, 17.0, 25.0, 23.0, 19.0, 29.0, 23.0].map(|v: f32| v + 10.0);
        assert_eq!(y, expected);
    }

    #[test]
    fn asymmetric_kernel_pins_the_tap_orientation() {
        // A single tap at (i, j) = (0, 2) reads x[h − 1, w + 1] (cross-correlation, as ONNX
        // Conv and PyTorch), so the output is the input shifted down and left.
        let shape = first(&[1, 1, 3, 3], &[1, 1, 3, 3], &[1], None).unwrap();
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut w = [0.0; 9];
        w[2] = 1.0;
        let inputs = ConvInputs {
            x: &x,
            w: &w,
            b: &[0.0],
            input_bias: None,
        };
        let y = run(&shape, Activation::None, inputs);
        assert_eq!(y, [0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 5.0, 6.0, 0.0]);
    }

    #[test]
    fn matches_the_formula_for_every_kernel_size_and_odd_images() {
        for k in [1, 3, 5, 7] {
            // Images narrower than the kernel too: every tap of a row may fall outside.
            for (h, w) in [(5, 7), (1, 1), (2, 3), (9, 4)] {
                let shape = first(&[2, 3, h, w], &[3, 1, k, k], &[3], Some(&[3])).unwrap();
                let x = values(shape.len(), 0.3);
                let wt = values(shape.weight_len(), 1.1);
                let inputs = ConvInputs {
                    x: &x,
                    w: &wt,
                    b: &[0.1, -0.2, 0.3],
                    input_bias: Some(&[0.5, -1.0, 0.25]),
                };
                for act in Activation::ALL {
                    let y = run(&shape, act, inputs);
                    let e = naive(&shape, act, inputs);
                    for (a, b) in y.iter().zip(&e) {
                        assert!((a - b).abs() <= 1e-5, "K={k} {h}×{w} {act}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn channels_last_is_the_same_convolution_on_transposed_images() {
        for k in [1, 3, 5] {
            for (n, c, h, w) in [(2, 3, 5, 7), (1, 1, 1, 1), (1, 4, 2, 3), (3, 2, 9, 4)] {
                let first = first(&[n, c, h, w], &[c, 1, k, k], &[c], Some(&[c])).unwrap();
                let last = last(&[n, h, w, c], &[c, 1, k, k], &[c], Some(&[c])).unwrap();
                assert_eq!(
                    last,
                    ConvShape {
                        layout: Layout::ChannelsLast,
                        ..first
                    }
                );
                let x_first = values(first.len(), 0.4);
                // The same values at [n, h, w, c] that x_first holds at [n, c, h, w].
                let at_last = |v: &[f32]| {
                    let mut out = vec![0.0; v.len()];
                    for (i, &value) in v.iter().enumerate() {
                        let (b, ch, pix) = (i / (c * h * w), i / (h * w) % c, i % (h * w));
                        out[(b * h * w + pix) * c + ch] = value;
                    }
                    out
                };
                let x_last = at_last(&x_first);
                let wt = values(first.weight_len(), 0.8);
                let b = values(c, 2.0);
                let ib = values(c, 3.0);
                for act in Activation::ALL {
                    let inputs = |x| ConvInputs {
                        x,
                        w: &wt,
                        b: &b,
                        input_bias: Some(&ib),
                    };
                    let expected = at_last(&naive(&first, act, inputs(&x_first)));
                    let attrs = ConvAttributes {
                        activation: act,
                        layout: Layout::ChannelsLast,
                    };
                    let mut y = vec![f32::NAN; last.len()];
                    depthwise_conv(&last, &attrs, inputs(&x_last), &mut y).unwrap();
                    assert_eq!(y, expected, "K={k} {n}×{h}×{w}×{c} {act}");
                }
            }
        }
    }

    #[test]
    fn channels_last_names_its_layout_and_refuses_plane_ranges() {
        let e = last(&[1, 4, 4], &[4, 1, 3, 3], &[4], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs rank 4 [N, H, W, C]"), "{e}");
        // C is the last axis: W must have X's last dimension of filters.
        let e = last(&[1, 4, 5, 6], &[4, 1, 3, 3], &[4], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("with C = 6"), "{e}");
        let shape = last(&[1, 2, 2, 3], &[3, 1, 1, 1], &[3], None).unwrap();
        assert_eq!((shape.channels, shape.height, shape.width), (3, 2, 2));
        let inputs = ConvInputs {
            x: &[0.0; 12],
            w: &[1.0; 3],
            b: &[0.0; 3],
            input_bias: None,
        };
        let attrs = ConvAttributes {
            layout: Layout::ChannelsLast,
            ..ConvAttributes::default()
        };
        let e = depthwise_conv_planes(&shape, &attrs, inputs, 0..1, &mut [0.0; 4]).unwrap_err();
        assert_eq!(e, ConvError::PlanesOfChannelsLast);
        let e = depthwise_conv(&shape, &attrs, inputs, &mut [0.0; 11]).unwrap_err();
        assert!(
            e.to_string().contains("holds 11 values, expected 12"),
            "{e}"
        );
        let e = depthwise_conv(
            &shape,
            &attrs,
            ConvInputs {
                x: &[0.0; 5],
                ..inputs
            },
            &mut [0.0; 12],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("input `X` holds 5 values, expected 12"),
            "{e}"
        );

        assert_eq!(
            ConvAttributes::new(None, Some(1)).unwrap().layout,
            Layout::ChannelsLast
        );
        assert_eq!(
            ConvAttributes::new(None, None).unwrap().layout,
            Layout::ChannelsFirst
        );
        let e = ConvAttributes::new(None, Some(2)).unwrap_err().to_string();
        assert!(
            e.contains("attribute `channels_last` = 2: must be 0"),
            "{e}"
        );
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            assert_eq!(Layout::from_attribute(layout.as_attribute()), Ok(layout));
        }
    }

    #[test]
    fn input_bias_is_an_add_inside_the_image_only() {
        let shape = first(&[1, 2, 4, 5], &[2, 1, 3, 3], &[2], Some(&[2])).unwrap();
        let x = values(shape.len(), 0.0);
        let w = values(shape.weight_len(), 2.0);
        let b = [0.25, -0.5];
        let ib = [1.5, -2.0];
        let with_bias = run(
            &shape,
            Activation::None,
            ConvInputs {
                x: &x,
                w: &w,
                b: &b,
                input_bias: Some(&ib),
            },
        );
        // The same as adding it to X first (then zero padding)…
        let plane = shape.plane_len();
        let x_plus: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + ib[i / plane % 2])
            .collect();
        let explicit = run(
            &shape,
            Activation::None,
            ConvInputs {
                x: &x_plus,
                w: &w,
                b: &b,
                input_bias: None,
            },
        );
        for (a, e) in with_bias.iter().zip(&explicit) {
            assert!((a - e).abs() <= 1e-5, "{a} vs {e}");
        }
        // …and not the same as folding it into B (Σ W · ib), which differs at the borders only.
        let folded: Vec<f32> = (0..2)
            .map(|c| b[c] + ib[c] * w[c * 9..(c + 1) * 9].iter().sum::<f32>())
            .collect();
        let folded_y = run(
            &shape,
            Activation::None,
            ConvInputs {
                x: &x,
                w: &w,
                b: &folded,
                input_bias: None,
            },
        );
        let (h, wd) = (shape.height, shape.width);
        for (i, (a, f)) in with_bias.iter().zip(&folded_y).enumerate() {
            let (r, s) = (i % plane / wd, i % wd);
            let interior = r > 0 && r + 1 < h && s > 0 && s + 1 < wd;
            assert_eq!((a - f).abs() <= 1e-5, interior, "at {i}: {a} vs {f}");
        }
    }

    #[test]
    fn activations_are_identity_silu_and_exact_gelu() {
        let shape = first(&[1, 1, 1, 1], &[1, 1, 1, 1], &[1], None).unwrap();
        for v in [-3.0f32, -0.5, 0.0, 0.75, 2.0] {
            let y = |act| {
                run(
                    &shape,
                    act,
                    ConvInputs {
                        x: &[v],
                        w: &[1.0],
                        b: &[0.0],
                        input_bias: None,
                    },
                )[0]
            };
            assert_eq!(y(Activation::None), v);
            assert!((y(Activation::Silu) - v / (1.0 + (-v).exp())).abs() <= 1e-7);
            // GELU(v) = v · Φ(v), from Φ's tabulated values (math.erf in float64).
            let phi = match v {
                -3.0 => 0.0013498980316301035,
                -0.5 => 0.3085375387259869,
                0.0 => 0.5,
                0.75 => 0.7733726476231317,
                _ => 0.9772498680518208,
            };
            let (g, e) = (f64::from(y(Activation::Gelu)), f64::from(v) * phi);
            assert!((g - e).abs() <= 2e-7, "GELU({v}) = {g}, expected {e}");
        }
        assert_eq!(Activation::ALL.map(Activation::as_code), [0, 1, 2]);
    }

    #[test]
    fn erf_matches_known_values() {
        // (x, erf(x), erfc(x)) from Python's math.erf / math.erfc.
        let known: [(f32, f64, f64); 8] = [
            (0.0, 0.0, 1.0),
            (0.1, 0.1124629160182849, 0.8875370839817152),
            (0.5, 0.5204998778130465, 0.4795001221869535),
            (1.0, 0.8427007929497149, 0.15729920705028513),
            (1.5, 0.9661051464753108, 0.033894853524689274),
            (2.0, 0.9953222650189527, 0.004677734981047265),
            (3.0, 0.9999779095030014, 2.2090496998585438e-05),
            (5.0, 1.0, 1.5374597944280351e-12),
        ];
        for (x, e, ec) in known {
            let (got, got_c) = (f64::from(erf(x)), f64::from(erfc(x)));
            assert!((got - e).abs() <= 2e-7, "erf({x}) = {got}, expected {e}");
            assert!(
                (got_c - ec).abs() <= 2e-7 * ec,
                "erfc({x}) = {got_c}, expected {ec}"
            );
            // Odd symmetry, erfc(−x) = 2 − erfc(x).
            assert!((f64::from(erf(-x)) + e).abs() <= 2e-7);
            assert!((f64::from(erfc(-x)) - (2.0 - ec)).abs() <= 4e-7);
        }
        // Far tails: GELU is exactly 0 / the identity in float32, and never NaN.
        assert_eq!(gelu(-40.0), -0.0);
        assert_eq!(gelu(40.0), 40.0);
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
        // Relative precision survives where 1 + erf cancels: Φ(−5) = 2.866515718791939e-7.
        let g = f64::from(gelu(-5.0));
        assert!(
            (g / (-5.0 * 2.866515718791939e-7) - 1.0).abs() <= 2e-7,
            "{g}"
        );
    }

    #[test]
    fn a_range_of_planes_matches_the_whole_call() {
        let shape = first(&[2, 3, 4, 4], &[3, 1, 5, 5], &[3], None).unwrap();
        let x = values(shape.len(), 0.9);
        let w = values(shape.weight_len(), 0.2);
        let inputs = ConvInputs {
            x: &x,
            w: &w,
            b: &[1.0, 2.0, 3.0],
            input_bias: None,
        };
        let whole = run(&shape, Activation::Gelu, inputs);
        let attrs = ConvAttributes {
            activation: Activation::Gelu,
            ..ConvAttributes::default()
        };
        let plane = shape.plane_len();
        let mut part = vec![0.0; 3 * plane];
        depthwise_conv_planes(&shape, &attrs, inputs, 2..5, &mut part).unwrap();
        assert_eq!(part, whole[2 * plane..5 * plane]);
        let e = depthwise_conv_planes(&shape, &attrs, inputs, 5..7, &mut vec![0.0; 2 * plane])
            .unwrap_err();
        assert!(e.to_string().contains("planes 5..7"), "{e}");
        let e = depthwise_conv_planes(&shape, &attrs, inputs, 2..5, &mut vec![0.0; 2 * plane])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("output `Y` buffer holds 32 values, expected 48"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_shapes_and_attributes_naming_them() {
        let err = |x: &[usize], w: &[usize], b: &[usize], ib: Option<&[usize]>| {
            first(x, w, b, ib).unwrap_err().to_string()
        };
        let e = err(&[2, 3, 4], &[3, 1, 3, 3], &[3], None);
        assert!(
            e.contains("input `X` has shape [2, 3, 4]: needs rank 4"),
            "{e}"
        );
        let e = err(&[1, 3, 4, 4], &[3, 3, 3], &[3], None);
        assert!(
            e.contains("input `W` has shape [3, 3, 3], expected [C, 1, K, K]"),
            "{e}"
        );
        let e = err(&[1, 3, 4, 4], &[4, 1, 3, 3], &[3], None);
        assert!(e.contains("with C = 3"), "{e}");
        let e = err(&[1, 3, 4, 4], &[3, 2, 3, 3], &[3], None);
        assert!(e.contains("input `W` has shape [3, 2, 3, 3]"), "{e}");
        let e = err(&[1, 3, 4, 4], &[3, 1, 3, 5], &[3], None);
        assert!(e.contains("input `W` has shape [3, 1, 3, 5]"), "{e}");
        let e = err(&[1, 3, 4, 4], &[3, 1, 4, 4], &[3], None);
        assert!(e.contains("4×4 kernel: K must be odd"), "{e}");
        let e = err(&[1, 3, 4, 4], &[3, 1, 0, 0], &[3], None);
        assert!(e.contains("K must be odd"), "{e}");
        let e = err(&[1, 3, 4, 4], &[3, 1, 9, 9], &[3], None);
        assert!(e.contains("9×9 kernel: larger than the 7×7"), "{e}");
        let e = err(&[1, 3, 4, 4], &[3, 1, 3, 3], &[1, 3], None);
        assert!(
            e.contains("input `B` has shape [1, 3], expected [C] = [3]"),
            "{e}"
        );
        let e = err(&[1, 3, 4, 4], &[3, 1, 3, 3], &[3], Some(&[4]));
        assert!(
            e.contains("input `InputBias` has shape [4], expected [C] = [3]"),
            "{e}"
        );

        let e = ConvAttributes::new(Some("relu"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("attribute `activation` = \"relu\""), "{e}");
        assert!(ConvAttributes::new(Some("GELU"), None).is_err());
        assert_eq!(
            ConvAttributes::new(None, None).unwrap(),
            ConvAttributes::default()
        );
        for act in Activation::ALL {
            assert_eq!(
                ConvAttributes::new(Some(act.name()), Some(0))
                    .unwrap()
                    .activation,
                act
            );
        }

        let shape = first(&[1, 1, 2, 2], &[1, 1, 3, 3], &[1], None).unwrap();
        let inputs = ConvInputs {
            x: &[0.0; 4],
            w: &[0.0; 8],
            b: &[0.0],
            input_bias: None,
        };
        let e =
            depthwise_conv(&shape, &ConvAttributes::default(), inputs, &mut [0.0; 4]).unwrap_err();
        assert!(
            e.to_string()
                .contains("input `W` holds 8 values, expected 9"),
            "{e}"
        );
    }
}
