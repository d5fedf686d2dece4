//! Raw little-endian element bytes → f32, for every element type a checkpoint may hold.

use half::{bf16, f16};

/// Element type of stored tensor bytes (always little-endian here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl ElemType {
    pub(crate) fn size(self) -> usize {
        match self {
            ElemType::F64 | ElemType::I64 | ElemType::U64 => 8,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F16 | ElemType::BF16 | ElemType::I16 | ElemType::U16 => 2,
            ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
        }
    }

    /// Converts one element; `b` holds exactly `self.size()` bytes.
    #[inline]
    fn one(self, b: &[u8]) -> f32 {
        match self {
            ElemType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            ElemType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            ElemType::F16 => f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            ElemType::BF16 => bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            ElemType::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            ElemType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            ElemType::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
            ElemType::I8 => b[0] as i8 as f32,
            ElemType::U8 => b[0] as f32,
            ElemType::U16 => u16::from_le_bytes([b[0], b[1]]) as f32,
            ElemType::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            ElemType::U64 => u64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            ElemType::Bool => {
                if b[0] != 0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }

    /// Converts densely packed elements (`bytes.len()` must be a multiple of the element size).
    pub(crate) fn to_f32_vec(self, bytes: &[u8]) -> Vec<f32> {
        let size = self.size();
        debug_assert_eq!(bytes.len() % size, 0);
        match self {
            // The hot path: most checkpoints are all f32.
            ElemType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => bytes.chunks_exact(size).map(|c| self.one(c)).collect(),
        }
    }

    /// Gathers a strided view out of a storage: element `offset + Σ i_k·stride_k` for every
    /// row-major multi-index `i` of `shape` (offset and strides in elements). Errors when the view
    /// reaches past the storage.
    pub(crate) fn gather(
        self,
        storage: &[u8],
        offset: usize,
        shape: &[usize],
        stride: &[usize],
    ) -> Result<Vec<f32>, String> {
        if shape.len() != stride.len() {
            return Err(format!(
                "size {shape:?} and stride {stride:?} have different ranks"
            ));
        }
        let size = self.size();
        let storage_elems = storage.len() / size;
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("size {shape:?} overflows"))?;
        if numel == 0 {
            return Ok(Vec::new());
        }
        // Last element the view touches (all strides are non-negative in torch).
        let last = shape
            .iter()
            .zip(stride)
            .try_fold(offset, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            })
            .ok_or_else(|| format!("offset/stride overflow for size {shape:?}"))?;
        if last >= storage_elems {
            return Err(format!(
                "view (offset {offset}, size {shape:?}, stride {stride:?}) reaches element {last} \
                 but the storage holds only {storage_elems}"
            ));
        }
        if is_row_major(shape, stride) {
            return Ok(self.to_f32_vec(&storage[offset * size..(offset + numel) * size]));
        }
        let mut out = Vec::with_capacity(numel);
        let rank = shape.len();
        let mut index = vec![0usize; rank];
        let mut pos = offset;
        for _ in 0..numel {
            out.push(self.one(&storage[pos * size..(pos + 1) * size]));
            // Advance the multi-index like an odometer, keeping `pos` in step.
            for k in (0..rank).rev() {
                index[k] += 1;
                pos += stride[k];
                if index[k] < shape[k] {
                    break;
                }
                pos -= stride[k] * shape[k];
                index[k] = 0;
            }
        }
        Ok(out)
    }
}

/// Whether `stride` is the dense row-major layout of `shape` (size-1 dimensions may have any stride).
fn is_row_major(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn converts_each_type() {
        assert_eq!(
            ElemType::F32.to_f32_vec(&f32_bytes(&[1.5, -2.0])),
            [1.5, -2.0]
        );
        let h: Vec<u8> = [f16::from_f32(0.5), f16::from_f32(-3.0)]
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect();
        assert_eq!(ElemType::F16.to_f32_vec(&h), [0.5, -3.0]);
        let b: Vec<u8> = bf16::from_f32(2.0).to_bits().to_le_bytes().to_vec();
        assert_eq!(ElemType::BF16.to_f32_vec(&b), [2.0]);
        let l: Vec<u8> = [7i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(ElemType::I64.to_f32_vec(&l), [7.0, -1.0]);
        assert_eq!(ElemType::F64.to_f32_vec(&0.25f64.to_le_bytes()), [0.25]);
        assert_eq!(ElemType::Bool.to_f32_vec(&[0, 1, 2]), [0.0, 1.0, 1.0]);
        assert_eq!(ElemType::I8.to_f32_vec(&[255]), [-1.0]);
    }

    #[test]
    fn gathers_views() {
        let storage = f32_bytes(&(0..12).map(|x| x as f32).collect::<Vec<_>>());
        // Contiguous with offset.
        let v = ElemType::F32.gather(&storage, 2, &[2, 3], &[3, 1]).unwrap();
        assert_eq!(v, [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        // Transposed 3x4 → 4x3.
        let v = ElemType::F32.gather(&storage, 0, &[4, 3], &[1, 4]).unwrap();
        assert_eq!(
            v,
            [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]
        );
        // Scalar.
        assert_eq!(ElemType::F32.gather(&storage, 5, &[], &[]).unwrap(), [5.0]);
        // Broadcast (stride 0).
        assert_eq!(
            ElemType::F32.gather(&storage, 1, &[3], &[0]).unwrap(),
            [1.0, 1.0, 1.0]
        );
        // Empty.
        assert!(ElemType::F32
            .gather(&storage, 0, &[0, 3], &[3, 1])
            .unwrap()
            .is_empty());
        // Out of bounds.
        let err = ElemType::F32
            .gather(&storage, 4, &[3, 3], &[3, 1])
            .unwrap_err();
        assert!(err.contains("storage holds only 12"), "{err}");
    }
}
