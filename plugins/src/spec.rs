//! The `ai.groupmamba::SelectiveScan` contract as code: names, directions, shapes and
//! the errors every adapter reports. `plugins/SPEC.md` is the normative text; this
//! module only encodes it.

use std::fmt;

/// ONNX operator-set domain of the operator.
pub const DOMAIN: &str = "ai.groupmamba";
/// ONNX `op_type` of the operator.
pub const OP_TYPE: &str = "SelectiveScan";
/// Version of the `ai.groupmamba` operator set that defines this operator.
pub const OPSET_VERSION: i64 = 1;
/// Name of the (required) `ints` attribute holding one direction per group.
pub const ATTR_DIRECTIONS: &str = "directions";
/// Above this value `softplus(x)` is `x` (the official kernel's and `F.softplus`'s rule).
pub const SOFTPLUS_THRESHOLD: f32 = 20.0;

/// The seven inputs of the operator, in node-input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanInput {
    /// `u` `[N, C, H, W]`, type T.
    U,
    /// `delta` `[N, C, H, W]`, type T, before bias and softplus.
    Delta,
    /// `A` `[C]`, float32, already `-exp(A_logs)`.
    A,
    /// `B` `[N, G, H, W]`, type T.
    B,
    /// `C` `[N, G, H, W]`, type T.
    C,
    /// `D` `[C]`, float32.
    D,
    /// `delta_bias` `[C]`, float32.
    DeltaBias,
}

impl ScanInput {
    /// All inputs in node-input order (index `i` is node input `i`).
    pub const ALL: [ScanInput; 7] = [
        ScanInput::U,
        ScanInput::Delta,
        ScanInput::A,
        ScanInput::B,
        ScanInput::C,
        ScanInput::D,
        ScanInput::DeltaBias,
    ];

    /// The input's name in the specification.
    pub fn name(self) -> &'static str {
        match self {
            ScanInput::U => "u",
            ScanInput::Delta => "delta",
            ScanInput::A => "A",
            ScanInput::B => "B",
            ScanInput::C => "C",
            ScanInput::D => "D",
            ScanInput::DeltaBias => "delta_bias",
        }
    }

    /// Position of the input on the node.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the input has the operator's type parameter T (otherwise it is always float32).
    pub fn is_type_t(self) -> bool {
        matches!(
            self,
            ScanInput::U | ScanInput::Delta | ScanInput::B | ScanInput::C
        )
    }

    /// The symbolic shape the specification gives, for messages.
    pub fn shape_doc(self) -> &'static str {
        match self {
            ScanInput::U | ScanInput::Delta => "[N, C, H, W]",
            ScanInput::B | ScanInput::C => "[N, G, H, W]",
            ScanInput::A | ScanInput::D | ScanInput::DeltaBias => "[C]",
        }
    }
}

impl fmt::Display for ScanInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can be wrong with a call of the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The `directions` attribute is empty.
    #[error("attribute `directions` is empty: it needs one direction (0..=3) per group")]
    NoDirections,
    /// A `directions` entry outside `0..=3`.
    #[error(
        "attribute `directions`[{position}] = {value} is not a direction \
         (0 = row-major →, 1 = column-major ↓, 2 = reversed row-major ←, 3 = reversed column-major ↑)"
    )]
    BadDirection { position: usize, value: i64 },
    /// The number of groups (dim 1 of `B`/`C`) differs from the number of directions.
    #[error("input `B` has {groups} groups (shape {b_shape:?}) but attribute `directions` has {directions} entries")]
    DirectionCount {
        directions: usize,
        groups: usize,
        b_shape: Vec<usize>,
    },
    /// Zero groups.
    #[error("G = 0 groups: B and C must have at least one group (dim 1 of [N, G, H, W])")]
    NoGroups,
    /// `C` is not a multiple of `G`.
    #[error("C = {channels} channels (dim 1 of u) are not divisible by G = {groups} groups")]
    GroupsDoNotDivide { channels: usize, groups: usize },
    /// An input has the wrong rank.
    #[error("input `{input}` must have rank {expected} {doc}, got shape {found:?}", doc = input.shape_doc())]
    Rank {
        input: ScanInput,
        expected: usize,
        found: Vec<usize>,
    },
    /// An input's shape disagrees with the shape implied by `u` and `B`.
    #[error(
        "input `{input}` has shape {found:?}, expected {expected:?} = {doc} \
         (from u {u_shape:?} and G = {groups})",
        doc = input.shape_doc()
    )]
    Shape {
        input: ScanInput,
        expected: Vec<usize>,
        found: Vec<usize>,
        u_shape: Vec<usize>,
        groups: usize,
    },
    /// A flat buffer handed to the CPU kernel has the wrong length.
    #[error("input `{input}` holds {found} values, expected {expected} for {shape}")]
    Length {
        input: ScanInput,
        expected: usize,
        found: usize,
        shape: ScanShape,
    },
    /// The output buffer handed to the CPU kernel has the wrong length.
    #[error("output `y` buffer holds {found} values, expected {expected} for {shape}")]
    OutputLength {
        expected: usize,
        found: usize,
        shape: ScanShape,
    },
    /// The element count overflows `usize`.
    #[error("{shape} is too large: element count overflows usize")]
    TooLarge { shape: ScanShape },
    /// An element type the implementation does not handle.
    #[error("input `{input}` has element type {found}, this implementation accepts {accepted}")]
    UnsupportedType {
        input: ScanInput,
        found: String,
        accepted: &'static str,
    },
}

/// A scan direction: the order in which the H×W positions of one image are visited.
///
/// `index(s, h, w)` maps sequence step `s` to the row-major offset `p = row·W + col` it
/// visits. The output is always written at `p`, so the direction changes the visiting
/// order only, never the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// 0, →: rows top to bottom, left to right inside a row (`s = row·W + col`).
    RowMajor = 0,
    /// 1, ↓: columns left to right, top to bottom inside a column (`s = col·H + row`).
    ColumnMajor = 1,
    /// 2, ←: the reverse of 0, starting bottom-right (`s = L-1 - (row·W + col)`).
    RowMajorReversed = 2,
    /// 3, ↑: the reverse of 1, starting bottom-right (`s = L-1 - (col·H + row)`).
    ColumnMajorReversed = 3,
}

impl Direction {
    /// The four directions by attribute value.
    pub const ALL: [Direction; 4] = [
        Direction::RowMajor,
        Direction::ColumnMajor,
        Direction::RowMajorReversed,
        Direction::ColumnMajorReversed,
    ];

    /// The direction with attribute value `value` (0..=3); `position` is only used in the error.
    pub fn from_i64_at(value: i64, position: usize) -> Result<Direction, ScanError> {
        match value {
            0 => Ok(Direction::RowMajor),
            1 => Ok(Direction::ColumnMajor),
            2 => Ok(Direction::RowMajorReversed),
            3 => Ok(Direction::ColumnMajorReversed),
            _ => Err(ScanError::BadDirection { position, value }),
        }
    }

    /// The direction with attribute value `value` (0..=3).
    pub fn from_i64(value: i64) -> Result<Direction, ScanError> {
        Self::from_i64_at(value, 0)
    }

    /// Parses a whole `directions` attribute (must be non-empty, every entry in 0..=3).
    pub fn parse_list(values: &[i64]) -> Result<Vec<Direction>, ScanError> {
        if values.is_empty() {
            return Err(ScanError::NoDirections);
        }
        values
            .iter()
            .enumerate()
            .map(|(position, &value)| Self::from_i64_at(value, position))
            .collect()
    }

    /// The attribute value of this direction.
    pub fn as_i64(self) -> i64 {
        self as i64
    }

    /// The arrow used in the paper and in the specification.
    pub fn arrow(self) -> char {
        match self {
            Direction::RowMajor => '→',
            Direction::ColumnMajor => '↓',
            Direction::RowMajorReversed => '←',
            Direction::ColumnMajorReversed => '↑',
        }
    }

    /// Whether the sequence runs backwards (directions 2 and 3).
    pub fn is_reversed(self) -> bool {
        matches!(
            self,
            Direction::RowMajorReversed | Direction::ColumnMajorReversed
        )
    }

    /// Whether the sequence walks columns (directions 1 and 3).
    pub fn is_column_major(self) -> bool {
        matches!(
            self,
            Direction::ColumnMajor | Direction::ColumnMajorReversed
        )
    }

    /// Row-major offset `row·width + col` of the position visited at step `s`
    /// (`0 <= s < height·width`) of an image of `height` rows and `width` columns.
    ///
    /// # Panics
    /// If `s >= height·width`.
    pub fn index(self, s: usize, height: usize, width: usize) -> usize {
        let len = height * width;
        assert!(
            s < len,
            "step {s} out of range for a {height}x{width} image"
        );
        let s = if self.is_reversed() { len - 1 - s } else { s };
        if self.is_column_major() {
            let (col, row) = (s / height, s % height);
            row * width + col
        } else {
            s
        }
    }

    /// The whole visiting order: element `s` is `self.index(s, height, width)`.
    pub fn visiting_order(self, height: usize, width: usize) -> Vec<usize> {
        (0..height * width)
            .map(|s| self.index(s, height, width))
            .collect()
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_i64(), self.arrow())
    }
}

/// The sizes of one call: `u` is `[batch, channels, height, width]`, `B`/`C` are
/// `[batch, groups, height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScanShape {
    pub batch: usize,
    pub channels: usize,
    pub groups: usize,
    pub height: usize,
    pub width: usize,
}

impl fmt::Display for ScanShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "N={} C={} G={} H={} W={}",
            self.batch, self.channels, self.groups, self.height, self.width
        )
    }
}

impl ScanShape {
    /// Sequence length `L = H·W`.
    pub fn seq_len(&self) -> usize {
        self.height * self.width
    }

    /// Channels per group, `C / G`.
    pub fn group_width(&self) -> usize {
        self.channels / self.groups.max(1)
    }

    /// Checks `G >= 1`, `C mod G == 0` and that every tensor's element count fits `usize`.
    pub fn validate(&self) -> Result<(), ScanError> {
        if self.groups == 0 {
            return Err(ScanError::NoGroups);
        }
        if !self.channels.is_multiple_of(self.groups) {
            return Err(ScanError::GroupsDoNotDivide {
                channels: self.channels,
                groups: self.groups,
            });
        }
        let count = |dims: &[usize]| {
            dims.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .is_some()
        };
        if !count(&[self.batch, self.channels, self.height, self.width])
            || !count(&[self.batch, self.groups, self.height, self.width])
        {
            return Err(ScanError::TooLarge { shape: *self });
        }
        Ok(())
    }

    /// Checks the attribute against the shape: one direction per group.
    pub fn check_directions(&self, directions: &[Direction]) -> Result<(), ScanError> {
        if directions.is_empty() {
            return Err(ScanError::NoDirections);
        }
        if directions.len() != self.groups {
            return Err(ScanError::DirectionCount {
                directions: directions.len(),
                groups: self.groups,
                b_shape: self.expected_shape(ScanInput::B),
            });
        }
        Ok(())
    }

    /// The shape the specification requires for `input`.
    pub fn expected_shape(&self, input: ScanInput) -> Vec<usize> {
        match input {
            ScanInput::U | ScanInput::Delta => {
                vec![self.batch, self.channels, self.height, self.width]
            }
            ScanInput::B | ScanInput::C => vec![self.batch, self.groups, self.height, self.width],
            ScanInput::A | ScanInput::D | ScanInput::DeltaBias => vec![self.channels],
        }
    }

    /// Number of elements of `input` (the caller has run [`ScanShape::validate`]).
    pub fn expected_len(&self, input: ScanInput) -> usize {
        self.expected_shape(input).iter().product()
    }

    /// Derives the call's sizes from the seven input shapes (in [`ScanInput::ALL`] order),
    /// checking every rank and every dimension against `u` and `B`. The error names the
    /// first offending input and both shapes.
    pub fn from_input_shapes(shapes: [&[usize]; 7]) -> Result<ScanShape, ScanError> {
        for input in [ScanInput::U, ScanInput::B] {
            let found = shapes[input.index()];
            if found.len() != 4 {
                return Err(ScanError::Rank {
                    input,
                    expected: 4,
                    found: found.to_vec(),
                });
            }
        }
        let u = shapes[ScanInput::U.index()];
        let b = shapes[ScanInput::B.index()];
        let shape = ScanShape {
            batch: u[0],
            channels: u[1],
            groups: b[1],
            height: u[2],
            width: u[3],
        };
        for input in ScanInput::ALL {
            let found = shapes[input.index()];
            let expected = shape.expected_shape(input);
            if found.len() != expected.len() {
                return Err(ScanError::Rank {
                    input,
                    expected: expected.len(),
                    found: found.to_vec(),
                });
            }
            if found != expected.as_slice() {
                return Err(ScanError::Shape {
                    input,
                    expected,
                    found: found.to_vec(),
                    u_shape: u.to_vec(),
                    groups: shape.groups,
                });
            }
        }
        shape.validate()?;
        Ok(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_by_three_orders() {
        // The example of SPEC.md: positions p = row*3 + col of a 2x3 image.
        let (h, w) = (2, 3);
        assert_eq!(Direction::RowMajor.visiting_order(h, w), [0, 1, 2, 3, 4, 5]);
        assert_eq!(
            Direction::ColumnMajor.visiting_order(h, w),
            [0, 3, 1, 4, 2, 5]
        );
        assert_eq!(
            Direction::RowMajorReversed.visiting_order(h, w),
            [5, 4, 3, 2, 1, 0]
        );
        assert_eq!(
            Direction::ColumnMajorReversed.visiting_order(h, w),
            [5, 2, 4, 1, 3, 0]
        );
    }

    #[test]
    fn orders_are_permutations() {
        for (h, w) in [(1, 1), (1, 7), (7, 1), (3, 5), (16, 16), (18, 25)] {
            for dir in Direction::ALL {
                let mut order = dir.visiting_order(h, w);
                order.sort_unstable();
                assert!(order.iter().copied().eq(0..h * w), "{dir} {h}x{w}");
            }
        }
    }

    #[test]
    fn parse_directions() {
        assert_eq!(
            Direction::parse_list(&[0, 1, 2, 3]).unwrap(),
            Direction::ALL.to_vec()
        );
        assert_eq!(Direction::parse_list(&[]), Err(ScanError::NoDirections));
        assert_eq!(
            Direction::parse_list(&[0, 4]),
            Err(ScanError::BadDirection {
                position: 1,
                value: 4
            })
        );
        assert!(Direction::from_i64(-1).is_err());
    }

    #[test]
    fn shapes_are_checked_and_named() {
        let u = [2, 8, 3, 5];
        let b = [2, 4, 3, 5];
        let c1 = [8];
        let ok = ScanShape::from_input_shapes([&u, &u, &c1, &b, &b, &c1, &c1]).unwrap();
        assert_eq!(
            ok,
            ScanShape {
                batch: 2,
                channels: 8,
                groups: 4,
                height: 3,
                width: 5
            }
        );
        assert_eq!(ok.group_width(), 2);

        let bad_c = [2, 4, 5, 3];
        let err = ScanShape::from_input_shapes([&u, &u, &c1, &b, &bad_c, &c1, &c1]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`C`") && msg.contains("[2, 4, 5, 3]") && msg.contains("[2, 4, 3, 5]")
        );

        let bad_rank = [8, 1];
        let err = ScanShape::from_input_shapes([&u, &u, &bad_rank, &b, &b, &c1, &c1]).unwrap_err();
        assert!(err.to_string().contains("`A` must have rank 1"));

        let b3 = [2, 3, 3, 5];
        let err = ScanShape::from_input_shapes([&u, &u, &c1, &b3, &b3, &c1, &c1]).unwrap_err();
        assert_eq!(
            err,
            ScanError::GroupsDoNotDivide {
                channels: 8,
                groups: 3
            }
        );
        assert!(ok.check_directions(&[Direction::RowMajor]).is_err());
        assert!(ok.check_directions(&Direction::ALL).is_ok());
    }
}
