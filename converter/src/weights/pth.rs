//! PyTorch `.pth` checkpoints in the zip format of `torch.save` (PyTorch ≥ 1.6):
//! `<archive>/data.pkl` (a pickle whose tensors point, through persistent ids, at storages) and
//! `<archive>/data/<key>` (raw little-endian storage bytes).
//!
//! The pickle is run by candle's pickle machine (`candle_core::pickle::Stack`); the resulting
//! object tree is interpreted here rather than with candle's `read_all`, because we need (a) the
//! top-level keys, to find a nested state dict and to say what was there when nothing was found,
//! (b) errors instead of candle's silent skips (it only `eprintln!`s tensors it cannot read), and
//! (c) strided/offset views and one pass over the archive instead of re-opening it per tensor.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::pickle::{Object, Stack};

use super::convert::ElemType;
use super::{WeightsError, NESTED_KEYS};
use crate::tensor::Tensor;

/// Signature of the zip end-of-central-directory record.
const EOCD_SIGNATURE: &[u8; 4] = b"PK\x05\x06";
/// The EOCD is 22 bytes plus a comment of at most 65535 bytes, at the very end of the file.
const EOCD_SEARCH: u64 = 22 + 65535;
/// Longest candle error text we pass on (its messages can embed whole pickle objects).
const MAX_DETAIL: usize = 400;

pub(super) struct PthContents {
    pub nested_key: Option<String>,
    pub tensors: Vec<(String, Tensor)>,
}

/// Where a tensor's values live: a view into one storage of the archive.
#[derive(Debug, Clone)]
struct TensorRef {
    elem: ElemType,
    storage_key: String,
    storage_numel: usize,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn shorten(s: String) -> String {
    if s.chars().count() <= MAX_DETAIL {
        s
    } else {
        let cut: String = s.chars().take(MAX_DETAIL).collect();
        format!("{cut}…")
    }
}

/// True when a complete zip end-of-central-directory record ends the file: its signature, its
/// 22 fixed bytes and exactly its declared comment length.
fn has_eocd(file: &mut File, len: u64) -> std::io::Result<bool> {
    let start = len.saturating_sub(EOCD_SEARCH);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.take(len - start).read_to_end(&mut tail)?;
    Ok((0..tail.len().saturating_sub(21)).rev().any(|p| {
        tail[p..p + 4] == *EOCD_SIGNATURE && {
            let comment = u16::from_le_bytes([tail[p + 20], tail[p + 21]]) as usize;
            p + 22 + comment == tail.len()
        }
    }))
}

pub(super) fn load(path: &Path, len: u64) -> Result<PthContents, WeightsError> {
    let io_err = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    if !has_eocd(&mut file, len).map_err(io_err)? {
        return Err(WeightsError::Truncated {
            path: path.to_path_buf(),
            size: len,
            detail: None,
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        let detail = e.to_string();
        // zip says "Could not find EOCD" / central directory errors for cut files.
        if detail.contains("EOCD")
            || detail.contains("entral directory")
            || detail.contains("Unexpected end")
        {
            WeightsError::Truncated {
                path: path.to_path_buf(),
                size: len,
                detail: Some(detail),
            }
        } else {
            WeightsError::Zip {
                path: path.to_path_buf(),
                detail,
            }
        }
    })?;
    let zip_err = |what: &str, e: zip::result::ZipError| WeightsError::Zip {
        path: path.to_path_buf(),
        detail: format!("{what}: {e}"),
    };
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| zip_err("listing entries", e))?;

    // torch writes `<archive>/data.pkl`; prefer the shallowest one (TorchScript archives have more).
    let pkl = names
        .iter()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.matches('/').count())
        .cloned()
        .ok_or_else(|| {
            let mut entries: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
            if names.len() > 10 {
                entries.push("…");
            }
            WeightsError::NoPickle {
                path: path.to_path_buf(),
                entries: entries.join(", "),
            }
        })?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();

    let byteorder_entry = format!("{prefix}byteorder");
    if names.contains(&byteorder_entry) {
        let mut order = String::new();
        zip.by_name(&byteorder_entry)
            .map_err(|e| zip_err(&byteorder_entry, e))?
            .read_to_string(&mut order)
            .map_err(io_err)?;
        if order.trim() != "little" {
            return Err(WeightsError::Zip {
                path: path.to_path_buf(),
                detail: format!(
                    "byte order {:?} is not supported (only little-endian checkpoints)",
                    order.trim()
                ),
            });
        }
    }

    let root = {
        let entry = zip.by_name(&pkl).map_err(|e| zip_err(&pkl, e))?;
        let mut reader = BufReader::new(entry);
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut reader)
            .and_then(|()| stack.finalize())
            .map_err(|e| WeightsError::Pickle {
                path: path.to_path_buf(),
                entry: pkl.clone(),
                detail: explain_pickle_error(e.to_string()),
            })?
    };
    let root = unwrap_torchscript(root);

    let (nested_key, entries) = select_state_dict(path, &root)?;

    // Interpret every entry; non-tensor values (e.g. `_metadata`, which candle's pickle machine
    // merges into the dict) are skipped.
    let mut refs = Vec::new();
    for (name, value) in entries {
        match tensor_ref(value) {
            Ok(Some(r)) => refs.push((name.to_string(), r)),
            Ok(None) => {}
            Err(detail) => {
                return Err(WeightsError::BadTensor {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    detail,
                })
            }
        }
    }

    // Read each storage once, then cut every tensor out of it.
    let mut by_storage: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (_, r)) in refs.iter().enumerate() {
        by_storage.entry(&r.storage_key).or_default().push(i);
    }
    let mut out: Vec<Option<Tensor>> = vec![None; refs.len()];
    for (key, users) in &by_storage {
        let first = &refs[users[0]].1;
        let entry_name = format!("{prefix}data/{key}");
        let bad = |detail: String| WeightsError::BadTensor {
            path: path.to_path_buf(),
            name: refs[users[0]].0.clone(),
            detail,
        };
        let mut bytes = Vec::new();
        {
            let mut entry = zip.by_name(&entry_name).map_err(|e| {
                bad(format!(
                    "its storage {entry_name} cannot be opened in the archive: {e}"
                ))
            })?;
            bytes.reserve(entry.size() as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("reading its storage {entry_name} failed: {e}")))?;
        }
        let want = first.storage_numel.saturating_mul(first.elem.size());
        if bytes.len() < want {
            return Err(bad(format!(
                "its storage {entry_name} has {} bytes, the pickle declares {} elements ({want} bytes)",
                bytes.len(),
                first.storage_numel
            )));
        }
        for &i in users {
            let (name, r) = &refs[i];
            if r.elem != first.elem {
                return Err(WeightsError::BadTensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    detail: format!(
                        "storage {key} is shared by tensors of different types ({:?}, {:?})",
                        first.elem, r.elem
                    ),
                });
            }
            let data = r
                .elem
                .gather(&bytes, r.offset, &r.shape, &r.stride)
                .map_err(|detail| WeightsError::BadTensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    detail,
                })?;
            out[i] = Some(Tensor::new(r.shape.clone(), data));
        }
    }
    let tensors = refs
        .into_iter()
        .zip(out)
        .map(|((name, _), t)| (name, t.expect("every storage user was filled")))
        .collect();
    Ok(PthContents {
        nested_key,
        tensors,
    })
}

/// candle's pickle machine knows protocol-2 opcodes and the objects of plain state dicts; say what
/// its two common failures mean and how to get a file it reads.
fn explain_pickle_error(detail: String) -> String {
    // candle appends a backtrace on the following lines when RUST_BACKTRACE is set.
    let detail = detail.lines().next().unwrap_or_default().to_string();
    let hint = if detail.starts_with("unknown op-code") {
        Some(
            "the pickle uses opcodes of a protocol newer than 2 (torch.save(..., pickle_protocol=N) \
             with N > 2?); re-save with the default protocol or convert to safetensors",
        )
    } else if detail.starts_with("expected a dict, got")
        || detail.starts_with("expected a list, got")
    {
        Some(
            "the file holds Python objects the reader cannot rebuild (e.g. the yacs config or \
             optimizer/scaler objects of a full training checkpoint); save only the weights: \
             torch.save(torch.load(f, weights_only=False)['model_ema'], 'weights.pth') \
             (or ['model'])",
        )
    } else {
        None
    };
    let detail = shorten(detail);
    match hint {
        Some(h) => format!("{detail} — {h}"),
        None => detail,
    }
}

/// A TorchScript archive's data.pkl holds the module object; its state is the interesting part
/// (the same unwrapping candle's reader does).
fn unwrap_torchscript(obj: Object) -> Object {
    if let Object::Build { callable, args } = &obj {
        if let Object::Reduce {
            callable: class, ..
        } = callable.as_ref()
        {
            if let Object::Class { module_name, .. } = class.as_ref() {
                if module_name == "__torch__" || module_name.starts_with("__torch__.") {
                    return *args.clone();
                }
            }
        }
    }
    obj
}

/// String-keyed entries of a pickled dict, in file order.
type Entries<'a> = Vec<(&'a str, &'a Object)>;

/// The string-keyed entries of a dict object.
fn dict_entries(obj: &Object) -> Option<Entries<'_>> {
    match obj {
        Object::Dict(items) => Some(
            items
                .iter()
                .filter_map(|(k, v)| match k {
                    Object::Unicode(k) => Some((k.as_str(), v)),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn count_tensors(entries: &[(&str, &Object)]) -> usize {
    entries
        .iter()
        .filter(|(_, v)| !matches!(tensor_ref(v), Ok(None)))
        .count()
}

/// Picks the state dict: the top-level dict itself if it holds tensors, else the first of
/// [`NESTED_KEYS`] whose value is a dict holding tensors.
fn select_state_dict<'a>(
    path: &Path,
    root: &'a Object,
) -> Result<(Option<String>, Entries<'a>), WeightsError> {
    let top = dict_entries(root);
    if let Some(top) = &top {
        if count_tensors(top) > 0 {
            return Ok((None, top.clone()));
        }
    }
    let mut tried = Vec::new();
    for key in NESTED_KEYS {
        let value = top
            .as_ref()
            .and_then(|t| t.iter().find(|(k, _)| *k == key).map(|(_, v)| *v));
        match value {
            None => tried.push(format!("{key} (absent)")),
            Some(v) => match dict_entries(v) {
                Some(inner) if count_tensors(&inner) > 0 => {
                    return Ok((Some(key.to_string()), inner));
                }
                Some(_) => tried.push(format!("{key} (a dict without tensors)")),
                None => tried.push(format!("{key} (a {}, not a dict)", describe(v))),
            },
        }
    }
    let top_level = match &top {
        Some(t) if t.is_empty() => "the top-level object is an empty dict".to_string(),
        Some(t) => {
            let keys: Vec<String> = t
                .iter()
                .take(20)
                .map(|(k, v)| format!("{k} ({})", describe(v)))
                .collect();
            let more = if t.len() > 20 {
                format!(" and {} more", t.len() - 20)
            } else {
                String::new()
            };
            format!(
                "the top-level dict has no tensors, its keys are {}{more}",
                keys.join(", ")
            )
        }
        None => format!("the top-level object is a {}, not a dict", describe(root)),
    };
    Err(WeightsError::NoTensors {
        path: path.to_path_buf(),
        top_level,
        tried,
    })
}

/// A short type description of a pickle object, for error messages.
fn describe(obj: &Object) -> String {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => format!("class {module_name}.{class_name}"),
        Object::Int(_) | Object::Long(_) => "int".into(),
        Object::Float(_) => "float".into(),
        Object::Unicode(_) => "str".into(),
        Object::Bool(_) => "bool".into(),
        Object::None => "None".into(),
        Object::Tuple(_) => "tuple".into(),
        Object::List(_) => "list".into(),
        Object::Mark => "mark".into(),
        Object::Dict(items) => format!("dict of {} entries", items.len()),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match tensor_ref(obj) {
            Ok(Some(_)) => "tensor".into(),
            _ => match callable.as_ref() {
                Object::Class {
                    module_name,
                    class_name,
                } => format!("{module_name}.{class_name} object"),
                _ => "object".into(),
            },
        },
        Object::PersistentLoad(_) => "persistent reference".into(),
    }
}

fn as_usize(obj: &Object, what: &str) -> Result<usize, String> {
    match obj {
        Object::Int(v) if *v >= 0 => Ok(*v as usize),
        Object::Long(v) if *v >= 0 => Ok(*v as usize),
        other => Err(format!("{what} is {other:?}, expected a non-negative int")),
    }
}

fn as_usizes(obj: &Object, what: &str) -> Result<Vec<usize>, String> {
    match obj {
        Object::Tuple(items) => items.iter().map(|o| as_usize(o, what)).collect(),
        other => Err(format!("{what} is a {}, expected a tuple", describe(other))),
    }
}

fn storage_elem(class_name: &str) -> Option<ElemType> {
    Some(match class_name {
        "FloatStorage" => ElemType::F32,
        "DoubleStorage" => ElemType::F64,
        "HalfStorage" => ElemType::F16,
        "BFloat16Storage" => ElemType::BF16,
        "LongStorage" => ElemType::I64,
        "IntStorage" => ElemType::I32,
        "ShortStorage" => ElemType::I16,
        "CharStorage" => ElemType::I8,
        "ByteStorage" => ElemType::U8,
        "BoolStorage" => ElemType::Bool,
        _ => return None,
    })
}

/// Interprets an object as a tensor: `Ok(None)` when it is not one, `Err` when it is a tensor
/// this reader cannot handle.
fn tensor_ref(obj: &Object) -> Result<Option<TensorRef>, String> {
    let Object::Reduce { callable, args } = obj else {
        return Ok(None);
    };
    rebuild_call(callable, args)
}

fn rebuild_call(callable: &Object, args: &Object) -> Result<Option<TensorRef>, String> {
    let Object::Class {
        module_name,
        class_name,
    } = callable
    else {
        return Ok(None);
    };
    let tuple = |n: usize| -> Result<&[Object], String> {
        match args {
            Object::Tuple(items) if items.len() >= n => Ok(items),
            _ => Err(format!(
                "{module_name}.{class_name} called with {args:?}, expected a tuple of ≥ {n}"
            )),
        }
    };
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") => rebuild_tensor_v2(tuple(4)?).map(Some),
        // nn.Parameter(tensor, requires_grad, hooks[, state]): the tensor is the first argument.
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            match tensor_ref(&tuple(1)?[0])? {
                Some(r) => Ok(Some(r)),
                None => Err("a Parameter that does not wrap a plain tensor".into()),
            }
        }
        // Tensor subclasses: (func, type, args, state) → func(*args).
        ("torch._tensor", "_rebuild_from_type_v2") => {
            let items = tuple(3)?;
            match rebuild_call(&items[0], &items[2])? {
                Some(r) => Ok(Some(r)),
                None => Err("a tensor subclass that does not wrap a plain tensor".into()),
            }
        }
        (m, c) if m.starts_with("torch") && c.starts_with("_rebuild") => Err(format!(
            "unsupported tensor kind {m}.{c} (quantized, sparse, meta or device-specific tensors \
             cannot be read; save a dense CPU state_dict)"
        )),
        _ => Ok(None),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`
/// with `storage = persistent_load(('storage', torch.XStorage, key, location, numel))`.
fn rebuild_tensor_v2(args: &[Object]) -> Result<TensorRef, String> {
    let Object::PersistentLoad(pid) = &args[0] else {
        return Err(format!(
            "storage argument is a {}, expected a persistent id",
            describe(&args[0])
        ));
    };
    let pid = match pid.as_ref() {
        Object::Tuple(items) if items.len() >= 5 => items,
        other => return Err(format!("unexpected storage persistent id {other:?}")),
    };
    if pid[0] != Object::Unicode("storage".into()) {
        return Err(format!("unexpected persistent id kind {:?}", pid[0]));
    }
    let elem = match &pid[1] {
        Object::Class { class_name, .. } => storage_elem(class_name)
            .ok_or_else(|| format!("unsupported storage type {class_name}"))?,
        other => return Err(format!("storage type is {other:?}, expected a class")),
    };
    let storage_key = match &pid[2] {
        Object::Unicode(k) => k.clone(),
        other => return Err(format!("storage key is {other:?}, expected a str")),
    };
    let storage_numel = as_usize(&pid[4], "storage size")?;
    let offset = as_usize(&args[1], "storage offset")?;
    let shape = as_usizes(&args[2], "size")?;
    let stride = as_usizes(&args[3], "stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} have different ranks"
        ));
    }
    Ok(TensorRef {
        elem,
        storage_key,
        storage_numel,
        offset,
        shape,
        stride,
    })
}
