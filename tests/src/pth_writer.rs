//! A PyTorch-compatible `.pth` writer that needs no PyTorch: the zip format of `torch.save`
//! (PyTorch ≥ 1.6), with stored (uncompressed) entries:
//!
//! - `<archive>/data.pkl`: a protocol-2 pickle. A state dict is a `collections.OrderedDict` whose
//!   values are `torch._utils._rebuild_tensor_v2(persistent_load(('storage', torch.FloatStorage,
//!   '<key>', 'cpu', numel)), offset, size, stride, False, OrderedDict())`, followed (as torch
//!   does) by a BUILD that sets its `_metadata` attribute.
//! - `<archive>/data/<key>`: the raw little-endian bytes of each storage.
//! - `<archive>/byteorder` (`little`) and `<archive>/version` (`3\n`).
//!
//! Entries are aligned to 64 bytes like torch's writer. `torch.load` (and the Python pickle
//! machine in general) reads these files; so does candle's reader.

use std::io::{Seek, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Values of a tensor's storage.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// `torch.FloatStorage`
    F32(Vec<f32>),
    /// `torch.LongStorage`
    I64(Vec<i64>),
}

impl Storage {
    fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::I64(v) => v.len(),
        }
    }

    fn class_name(&self) -> &'static str {
        match self {
            Storage::F32(_) => "FloatStorage",
            Storage::I64(_) => "LongStorage",
        }
    }

    fn le_bytes(&self) -> Vec<u8> {
        match self {
            Storage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// One tensor: a view (offset, size, stride, in elements) into its own storage.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    pub storage: Storage,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl PthTensor {
    /// A dense row-major f32 tensor (`shape == []` is a scalar).
    pub fn f32(shape: &[usize], data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?}"
        );
        Self {
            storage: Storage::F32(data),
            offset: 0,
            shape: shape.to_vec(),
            stride: row_major_strides(shape),
        }
    }

    /// A dense row-major int64 tensor.
    pub fn i64(shape: &[usize], data: Vec<i64>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?}"
        );
        Self {
            storage: Storage::I64(data),
            offset: 0,
            shape: shape.to_vec(),
            stride: row_major_strides(shape),
        }
    }

    /// An int64 scalar, like BatchNorm's `num_batches_tracked`.
    pub fn scalar_i64(v: i64) -> Self {
        Self::i64(&[], vec![v])
    }

    /// An arbitrary view into `storage` (e.g. a transposed or sliced tensor).
    pub fn view(storage: Storage, offset: usize, shape: &[usize], stride: &[usize]) -> Self {
        assert_eq!(shape.len(), stride.len());
        if shape.iter().all(|&d| d > 0) {
            let last: usize = offset
                + shape
                    .iter()
                    .zip(stride)
                    .map(|(&d, &s)| (d - 1) * s)
                    .sum::<usize>();
            assert!(last < storage.len(), "view exceeds its storage");
        }
        Self {
            storage,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }
}

/// An ordered state dict (pickled as `collections.OrderedDict`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    pub entries: Vec<(String, PthTensor)>,
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, name: impl Into<String>, t: PthTensor) -> &mut Self {
        self.entries.push((name.into(), t));
        self
    }

    pub fn push_f32(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        data: Vec<f32>,
    ) -> &mut Self {
        self.push(name, PthTensor::f32(shape, data))
    }

    pub fn push_i64(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        data: Vec<i64>,
    ) -> &mut Self {
        self.push(name, PthTensor::i64(shape, data))
    }

    /// The same tensors with `prefix` in front of every name (e.g. `module.`).
    pub fn with_prefix(&self, prefix: &str) -> Self {
        Self {
            entries: self
                .entries
                .iter()
                .map(|(n, t)| (format!("{prefix}{n}"), t.clone()))
                .collect(),
        }
    }
}

/// A value of a top-level checkpoint dict.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    StateDict(StateDict),
    Int(i64),
    Float(f64),
    Str(String),
    None,
}

/// Writes a flat state dict, like `torch.save(model.state_dict(), path)`.
pub fn write_state_dict(path: &Path, sd: &StateDict) -> std::io::Result<()> {
    write_pth(path, Root::StateDict(sd))
}

/// Writes a plain dict at the top level, like `torch.save({"model": sd, "epoch": 3}, path)`.
pub fn write_dict(path: &Path, items: &[(&str, Value)]) -> std::io::Result<()> {
    write_pth(path, Root::Dict(items))
}

/// Writes `sd` nested one level under `key`, next to an `epoch` entry.
pub fn write_nested(path: &Path, key: &str, sd: &StateDict) -> std::io::Result<()> {
    write_dict(
        path,
        &[
            (key, Value::StateDict(sd.clone())),
            ("epoch", Value::Int(3)),
        ],
    )
}

/// The pickle and storages of a `.pth`, before zipping.
struct Serialized {
    pickle: Vec<u8>,
    storages: Vec<(String, Vec<u8>)>,
}

enum Root<'a> {
    StateDict(&'a StateDict),
    Dict(&'a [(&'a str, Value)]),
}

fn write_pth(path: &Path, root: Root<'_>) -> std::io::Result<()> {
    let archive = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "archive".into());
    let ser = serialize(root);
    let file = std::fs::File::create(path)?;
    write_zip(std::io::BufWriter::new(file), &archive, &ser)?.flush()
}

fn write_zip<W: Write + Seek>(w: W, archive: &str, ser: &Serialized) -> std::io::Result<W> {
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64);
    let mut zip = ZipWriter::new(w);
    let mut put = |name: String, bytes: &[u8]| -> std::io::Result<()> {
        zip.start_file(name, opts).map_err(std::io::Error::other)?;
        zip.write_all(bytes)
    };
    put(format!("{archive}/data.pkl"), &ser.pickle)?;
    put(format!("{archive}/byteorder"), b"little")?;
    for (key, bytes) in &ser.storages {
        put(format!("{archive}/data/{key}"), bytes)?;
    }
    put(format!("{archive}/version"), b"3\n")?;
    zip.finish().map_err(std::io::Error::other)
}

/// Pickle opcodes used (protocol 2).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEMS: u8 = b'u';
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const NONE: u8 = b'N';
    pub const NEWFALSE: u8 = 0x89;
    pub const STOP: u8 = b'.';
}

/// Protocol-2 pickle writer (no memo: every object is written in full).
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    storages: Vec<(String, Vec<u8>)>,
}

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(op::GLOBAL);
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn str(&mut self, s: &str) {
        self.out.push(op::BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.out.extend_from_slice(&[op::BININT1, v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.out.push(op::BININT2);
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            // Shortest two's-complement little-endian encoding, as Python's pickler writes it.
            let bytes = v.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let top = bytes[n - 1];
                let next_sign = bytes[n - 2] & 0x80 != 0;
                if (top == 0 && !next_sign) || (top == 0xff && next_sign) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.out.extend_from_slice(&[op::LONG1, n as u8]);
            self.out.extend_from_slice(&bytes[..n]);
        }
    }

    fn float(&mut self, v: f64) {
        self.out.push(op::BINFLOAT);
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn int_tuple(&mut self, items: &[usize]) {
        if items.is_empty() {
            self.out.push(op::EMPTY_TUPLE);
            return;
        }
        self.out.push(op::MARK);
        for &i in items {
            self.int(i as i64);
        }
        self.out.push(op::TUPLE);
    }

    /// `collections.OrderedDict()`
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
    }

    fn tensor(&mut self, t: &PthTensor) {
        let key = self.storages.len().to_string();
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(op::MARK);
        // persistent_load(('storage', torch.<X>Storage, key, 'cpu', numel))
        self.out.push(op::MARK);
        self.str("storage");
        self.global("torch", t.storage.class_name());
        self.str(&key);
        self.str("cpu");
        self.int(t.storage.len() as i64);
        self.out.push(op::TUPLE);
        self.out.push(op::BINPERSID);
        self.int(t.offset as i64);
        self.int_tuple(&t.shape);
        self.int_tuple(&t.stride);
        self.out.push(op::NEWFALSE); // requires_grad
        self.empty_ordered_dict(); // backward hooks
        self.out.push(op::TUPLE);
        self.out.push(op::REDUCE);
        self.storages.push((key, t.storage.le_bytes()));
    }

    fn state_dict(&mut self, sd: &StateDict) {
        self.empty_ordered_dict();
        if !sd.entries.is_empty() {
            self.out.push(op::MARK);
            for (name, t) in &sd.entries {
                self.str(name);
                self.tensor(t);
            }
            self.out.push(op::SETITEMS);
        }
        // state_dict()._metadata = OrderedDict([('', {'version': 1})]), set through BUILD.
        self.out.push(op::EMPTY_DICT);
        self.out.push(op::MARK);
        self.str("_metadata");
        self.empty_ordered_dict();
        self.out.push(op::MARK);
        self.str("");
        self.out.push(op::EMPTY_DICT);
        self.out.push(op::MARK);
        self.str("version");
        self.int(1);
        self.out.push(op::SETITEMS);
        self.out.push(op::SETITEMS);
        self.out.push(op::SETITEMS);
        self.out.push(op::BUILD);
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::StateDict(sd) => self.state_dict(sd),
            Value::Int(i) => self.int(*i),
            Value::Float(f) => self.float(*f),
            Value::Str(s) => self.str(s),
            Value::None => self.out.push(op::NONE),
        }
    }
}

fn serialize(root: Root<'_>) -> Serialized {
    let mut p = Pickler::default();
    p.out.extend_from_slice(&[op::PROTO, 2]);
    match root {
        Root::StateDict(sd) => p.state_dict(sd),
        Root::Dict(items) => {
            p.out.push(op::EMPTY_DICT);
            if !items.is_empty() {
                p.out.push(op::MARK);
                for (k, v) in items {
                    p.str(k);
                    p.value(v);
                }
                p.out.push(op::SETITEMS);
            }
        }
    }
    p.out.push(op::STOP);
    Serialized {
        pickle: p.out,
        storages: p.storages,
    }
}

/// The first bytes of a legacy (pre-1.6, non-zip) `torch.save` file: the pickled magic number
/// 0x1950a86a20f9469cfc6c, then the pickled protocol version 1001. Enough for format detection.
pub fn legacy_torch_header() -> Vec<u8> {
    let mut p = Pickler::default();
    p.out.extend_from_slice(&[op::PROTO, 2, op::LONG1, 10]);
    p.out
        .extend_from_slice(&0x1950a86a20f9469cfc6c_u128.to_le_bytes()[..10]);
    p.out.push(op::STOP);
    p.out.extend_from_slice(&[op::PROTO, 2]);
    p.int(1001);
    p.out.push(op::STOP);
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_match_python() {
        let enc = |v: i64| {
            let mut p = Pickler::default();
            p.int(v);
            p.out
        };
        assert_eq!(enc(7), [b'K', 7]);
        assert_eq!(enc(2352), [b'M', 0x30, 0x09]);
        assert_eq!(enc(-1), [b'J', 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(enc(1 << 31), [0x8a, 5, 0, 0, 0, 0x80, 0]);
        assert_eq!(enc(1 << 40), [0x8a, 6, 0, 0, 0, 0, 0, 1]);
        assert_eq!(enc(-(1 << 40)), [0x8a, 6, 0, 0, 0, 0, 0, 0xff]);
    }

    #[test]
    fn legacy_header_matches_python() {
        // pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)
        let h = legacy_torch_header();
        assert_eq!(
            h[..15],
            [
                0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
                0x2e
            ]
        );
    }

    #[test]
    fn strides() {
        assert_eq!(row_major_strides(&[16, 3, 7, 7]), [147, 49, 7, 1]);
        assert!(row_major_strides(&[]).is_empty());
    }
}
