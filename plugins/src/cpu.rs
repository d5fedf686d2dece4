//! The reference CPU kernel of `ai.groupmamba::SelectiveScan` (float32, FP32 state).
//!
//! Per (image, channel): the elementwise math (softplus, decay, drive) over the row in memory
//! order with [`crate::fastmath`] (vectorised), then the recurrence in the channel's group
//! direction, then y in memory order. The visiting order is produced by plain index iterators
//! (no table); two row-sized scratch buffers are reused across channels.

use crate::fastmath;
use crate::spec::{Direction, ScanError, ScanInput, ScanShape};

/// The operator's inputs as flat row-major (C-order) float32 buffers, in the shapes
/// [`ScanShape::expected_shape`] gives.
#[derive(Debug, Clone, Copy)]
pub struct ScanInputs<'a> {
    /// `[N, C, H, W]`
    pub u: &'a [f32],
    /// `[N, C, H, W]`, before bias and softplus.
    pub delta: &'a [f32],
    /// `[C]`, already `-exp(A_logs)`.
    pub a: &'a [f32],
    /// `[N, G, H, W]`
    pub b: &'a [f32],
    /// `[N, G, H, W]`
    pub c: &'a [f32],
    /// `[C]`
    pub d: &'a [f32],
    /// `[C]`
    pub delta_bias: &'a [f32],
}

impl<'a> ScanInputs<'a> {
    /// The buffer of `input`.
    pub fn get(&self, input: ScanInput) -> &'a [f32] {
        match input {
            ScanInput::U => self.u,
            ScanInput::Delta => self.delta,
            ScanInput::A => self.a,
            ScanInput::B => self.b,
            ScanInput::C => self.c,
            ScanInput::D => self.d,
            ScanInput::DeltaBias => self.delta_bias,
        }
    }

    /// Checks every buffer length against `shape`.
    pub fn check(&self, shape: &ScanShape) -> Result<(), ScanError> {
        shape.validate()?;
        for input in ScanInput::ALL {
            let expected = shape.expected_len(input);
            let found = self.get(input).len();
            if found != expected {
                return Err(ScanError::Length {
                    input,
                    expected,
                    found,
                    shape: *shape,
                });
            }
        }
        Ok(())
    }
}

pub use crate::fastmath::softplus;

/// Runs the selective scan: for every image `n` and channel `c` (group `g = c / (C/G)`,
/// direction `directions[g]`), with steps `t` in visiting order,
/// `Δ = softplus(delta + delta_bias[c])`, `h = exp(Δ·A[c])·h + Δ·B[n,g]·u`,
/// `y = C[n,g]·h + D[c]·u`, `h` starting at 0. `y` (`[N, C, H, W]`) is fully overwritten.
pub fn selective_scan(
    shape: &ScanShape,
    directions: &[Direction],
    inputs: ScanInputs<'_>,
    y: &mut [f32],
) -> Result<(), ScanError> {
    inputs.check(shape)?;
    shape.check_directions(directions)?;
    let expected = shape.expected_len(ScanInput::U);
    if y.len() != expected {
        return Err(ScanError::OutputLength {
            expected,
            found: y.len(),
            shape: *shape,
        });
    }
    let (height, width) = (shape.height, shape.width);
    let len = shape.seq_len();
    if len == 0 || expected == 0 {
        return Ok(());
    }
    let group_width = shape.group_width();
    let mut scratch = Scratch::default();
    for n in 0..shape.batch {
        for (g, &dir) in directions.iter().enumerate() {
            let bc = (n * shape.groups + g) * len..(n * shape.groups + g + 1) * len;
            let (b, c) = (&inputs.b[bc.clone()], &inputs.c[bc]);
            let channels = g * group_width..(g + 1) * group_width;
            for first in channels.clone().step_by(BLOCK) {
                let block = first..(first + BLOCK).min(channels.end);
                let rows = (n * shape.channels + block.start) * len
                    ..(n * shape.channels + block.end) * len;
                let channels = Channels {
                    u: &inputs.u[rows.clone()],
                    delta: &inputs.delta[rows.clone()],
                    b,
                    c,
                    a: &inputs.a[block.clone()],
                    d: &inputs.d[block.clone()],
                    delta_bias: &inputs.delta_bias[block],
                };
                let out = &mut y[rows];
                let s = &mut scratch;
                match dir {
                    Direction::RowMajor => channels.run(0..len, out, s),
                    Direction::RowMajorReversed => channels.run((0..len).rev(), out, s),
                    Direction::ColumnMajor => channels.run(column_major(height, width), out, s),
                    Direction::ColumnMajorReversed => {
                        channels.run(column_major(height, width).rev(), out, s)
                    }
                }
            }
        }
    }
    Ok(())
}

/// Like [`selective_scan`], returning a new `[N, C, H, W]` buffer.
pub fn selective_scan_to_vec(
    shape: &ScanShape,
    directions: &[Direction],
    inputs: ScanInputs<'_>,
) -> Result<Vec<f32>, ScanError> {
    inputs.check(shape)?;
    let mut y = vec![0f32; shape.expected_len(ScanInput::U)];
    selective_scan(shape, directions, inputs, &mut y)?;
    Ok(y)
}

/// Row-major offsets in column-major visiting order (columns left to right, rows top to
/// bottom inside a column). Reversed, it is direction 3.
fn column_major(height: usize, width: usize) -> impl DoubleEndedIterator<Item = usize> {
    (0..width).flat_map(move |col| (0..height).map(move |row| row * width + col))
}

/// Channels scanned together: their recurrences are independent, so interleaving them step by
/// step hides the latency of each one's multiply-add chain behind the others'.
const BLOCK: usize = 8;

/// Up to [`BLOCK`] consecutive channels of one image and group: their `L`-long rows (one
/// contiguous range), the group's `B`/`C` rows and per-channel `(A, D, delta_bias)`.
struct Channels<'a> {
    u: &'a [f32],
    delta: &'a [f32],
    b: &'a [f32],
    c: &'a [f32],
    a: &'a [f32],
    d: &'a [f32],
    delta_bias: &'a [f32],
}

/// Per-step decay and drive of a block of channels, reused from block to block.
#[derive(Default)]
struct Scratch {
    decay: Vec<f32>,
    /// The drive Δ·B·u, overwritten by the state h in the sequential pass.
    drive: Vec<f32>,
}

impl Channels<'_> {
    /// Three passes: the elementwise math in memory order (vectorised: no libm calls), the
    /// recurrences in visiting order (two flops a step, channels interleaved), the output in
    /// memory order.
    #[inline(always)]
    fn run(&self, order: impl Iterator<Item = usize>, y: &mut [f32], scratch: &mut Scratch) {
        let len = self.b.len();
        let m = self.a.len();
        let total = m * len;
        scratch.decay.resize(total, 0.0);
        scratch.drive.resize(total, 0.0);
        let (decay, drive) = (&mut scratch.decay[..total], &mut scratch.drive[..total]);
        for j in 0..m {
            let row = j * len..(j + 1) * len;
            let (u, delta) = (&self.u[row.clone()], &self.delta[row.clone()]);
            let (decay, drive) = (&mut decay[row.clone()], &mut drive[row]);
            let params = (self.a[j], self.delta_bias[j]);
            steps(params, delta, self.b, u, decay, drive);
        }
        let mut state = [0f32; BLOCK];
        for p in order {
            for (j, h) in state[..m].iter_mut().enumerate() {
                let i = j * len + p;
                *h = decay[i] * *h + drive[i];
                drive[i] = *h;
            }
        }
        for j in 0..m {
            let d = self.d[j];
            let row = j * len..(j + 1) * len;
            let (u, h, y) = (&self.u[row.clone()], &drive[row.clone()], &mut y[row]);
            for p in 0..len {
                y[p] = self.c[p] * h[p] + d * u[p];
            }
        }
    }
}

/// The elementwise pass of one channel: `decay = exp(Δ·A)`, `drive = Δ·B·u` with
/// `Δ = softplus(delta + delta_bias)`. Compiled twice on x86-64: for the baseline (SSE2) and
/// for AVX2 + FMA, chosen at run time.
fn steps(
    params: (f32, f32),
    delta: &[f32],
    b: &[f32],
    u: &[f32],
    decay: &mut [f32],
    drive: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { steps_avx2(params, delta, b, u, decay, drive) };
    }
    steps_generic(params, delta, b, u, decay, drive)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn steps_avx2(
    params: (f32, f32),
    delta: &[f32],
    b: &[f32],
    u: &[f32],
    decay: &mut [f32],
    drive: &mut [f32],
) {
    steps_generic(params, delta, b, u, decay, drive)
}

#[inline(always)]
fn steps_generic(
    (a, bias): (f32, f32),
    delta: &[f32],
    b: &[f32],
    u: &[f32],
    decay: &mut [f32],
    drive: &mut [f32],
) {
    let len = decay.len();
    let (delta, b, u, drive) = (&delta[..len], &b[..len], &u[..len], &mut drive[..len]);
    for p in 0..len {
        let dt = fastmath::softplus(delta[p] + bias);
        decay[p] = fastmath::exp(dt * a);
        drive[p] = dt * b[p] * u[p];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_step_closed_form() {
        // L = 1: y = C·(Δ·B·u) + D·u.
        let shape = ScanShape {
            batch: 1,
            channels: 2,
            groups: 1,
            height: 1,
            width: 1,
        };
        let inputs = ScanInputs {
            u: &[0.5, -2.0],
            delta: &[0.1, -0.3],
            a: &[-1.0, -0.5],
            b: &[0.7],
            c: &[-1.5],
            d: &[1.0, 0.25],
            delta_bias: &[0.2, 0.4],
        };
        let y = selective_scan_to_vec(&shape, &[Direction::ColumnMajorReversed], inputs).unwrap();
        for (ch, &got) in y.iter().enumerate() {
            let dt = softplus(inputs.delta[ch] + inputs.delta_bias[ch]);
            let expected = -1.5 * (dt * 0.7 * inputs.u[ch]) + inputs.d[ch] * inputs.u[ch];
            assert!((got - expected).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_lengths_are_named() {
        let shape = ScanShape {
            batch: 1,
            channels: 2,
            groups: 1,
            height: 1,
            width: 2,
        };
        let four = [0f32; 4];
        let two = [0f32; 2];
        let inputs = ScanInputs {
            u: &four,
            delta: &four,
            a: &two,
            b: &two,
            c: &four,
            d: &two,
            delta_bias: &two,
        };
        let err = selective_scan_to_vec(&shape, &[Direction::RowMajor], inputs).unwrap_err();
        assert!(err
            .to_string()
            .contains("input `C` holds 4 values, expected 2"));
        let mut y = [0f32; 3];
        let inputs = ScanInputs { c: &two, ..inputs };
        let err = selective_scan(&shape, &[Direction::RowMajor], inputs, &mut y).unwrap_err();
        assert!(matches!(err, ScanError::OutputLength { .. }));
        let err = selective_scan_to_vec(&shape, &Direction::ALL, inputs).unwrap_err();
        assert!(matches!(err, ScanError::DirectionCount { .. }));
    }
}
