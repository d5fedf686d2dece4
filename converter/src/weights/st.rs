//! `.safetensors` checkpoints, read with the `safetensors` crate.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::convert::ElemType;
use super::WeightsError;
use crate::tensor::Tensor;

fn elem_type(dtype: Dtype) -> Option<ElemType> {
    Some(match dtype {
        Dtype::F32 => ElemType::F32,
        Dtype::F64 => ElemType::F64,
        Dtype::F16 => ElemType::F16,
        Dtype::BF16 => ElemType::BF16,
        Dtype::I64 => ElemType::I64,
        Dtype::I32 => ElemType::I32,
        Dtype::I16 => ElemType::I16,
        Dtype::I8 => ElemType::I8,
        Dtype::U8 => ElemType::U8,
        Dtype::U16 => ElemType::U16,
        Dtype::U32 => ElemType::U32,
        Dtype::U64 => ElemType::U64,
        Dtype::BOOL => ElemType::Bool,
        _ => return None,
    })
}

pub(super) fn load(path: &Path) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Safetensors {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let elem = elem_type(view.dtype()).ok_or_else(|| WeightsError::BadTensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            detail: format!("unsupported safetensors dtype {:?}", view.dtype()),
        })?;
        let data = elem.to_f32_vec(view.data());
        out.push((name.to_string(), Tensor::new(view.shape().to_vec(), data)));
    }
    Ok(out)
}
