//! The reference CPU kernel of `ai.groupmamba::SelectiveScan` (float32, FP32 state).
//!
//! One sequential pass per (image, channel) in the channel's group direction. The
//! visiting order is produced by plain index iterators (no table, no allocation); the
//! output is written at the row-major position of each visited step.

use crate::spec::{Direction, ScanError, ScanInput, ScanShape, SOFTPLUS_THRESHOLD};

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

/// `softplus(x) = x` if `x > 20`, else `ln(1 + e^x)` (PyTorch's default threshold, the
/// rule of the official kernel). NaN propagates.
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > SOFTPLUS_THRESHOLD {
        x
    } else {
        x.exp().ln_1p()
    }
}

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
    for n in 0..shape.batch {
        for (g, &dir) in directions.iter().enumerate() {
            let bc = (n * shape.groups + g) * len..(n * shape.groups + g + 1) * len;
            let (b, c) = (&inputs.b[bc.clone()], &inputs.c[bc]);
            for ch in g * group_width..(g + 1) * group_width {
                let row = (n * shape.channels + ch) * len..(n * shape.channels + ch + 1) * len;
                let channel = Channel {
                    u: &inputs.u[row.clone()],
                    delta: &inputs.delta[row.clone()],
                    b,
                    c,
                    params: (inputs.a[ch], inputs.d[ch], inputs.delta_bias[ch]),
                };
                let out = &mut y[row];
                match dir {
                    Direction::RowMajor => channel.run(0..len, out),
                    Direction::RowMajorReversed => channel.run((0..len).rev(), out),
                    Direction::ColumnMajor => channel.run(column_major(height, width), out),
                    Direction::ColumnMajorReversed => {
                        channel.run(column_major(height, width).rev(), out)
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

/// One channel of one image: its `L`-long rows, its group's `B`/`C` rows and
/// `(A, D, delta_bias)`.
struct Channel<'a> {
    u: &'a [f32],
    delta: &'a [f32],
    b: &'a [f32],
    c: &'a [f32],
    params: (f32, f32, f32),
}

impl Channel<'_> {
    #[inline(always)]
    fn run(&self, order: impl Iterator<Item = usize>, y: &mut [f32]) {
        let (a, d, bias) = self.params;
        let mut state = 0f32;
        for p in order {
            let u = self.u[p];
            let dt = softplus(self.delta[p] + bias);
            state = (dt * a).exp() * state + dt * self.b[p] * u;
            y[p] = self.c[p] * state + d * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_branches() {
        assert_eq!(softplus(25.0), 25.0);
        assert_eq!(softplus(100.0), 100.0);
        assert!((softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert!((softplus(20.0) - 20.0).abs() < 1e-6);
        assert!(softplus(-100.0) >= 0.0 && softplus(-100.0) < 1e-30);
    }

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
