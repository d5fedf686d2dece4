//! A small `.npy` reader and writer for float32 tensors.
//!
//! Reads format versions 1.0, 2.0 and 3.0 (the header is a Python dict literal with
//! `descr`, `fortran_order` and `shape`), C order only. Element type: little-endian float32
//! (`<f4`) only — models take float32, and a silent conversion (from float64, say) would hide
//! a mistake upstream; anything else is rejected with the dtype found.
//! Writes `<f4`, C order, version 1.0 (2.0 when the header needs it), to a temporary file
//! in the destination folder that is then renamed over the destination.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";

/// What can go wrong reading or writing a `.npy` file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a .npy file (does not start with \\x93NUMPY)")]
    Magic { path: PathBuf },
    #[error("{path}: unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are read)")]
    Version { path: PathBuf, major: u8, minor: u8 },
    #[error("{path}: malformed header: {reason}")]
    Header { path: PathBuf, reason: String },
    #[error("{path}: dtype `{found}` is not supported: expected float32 (`<f4`); convert with `x.astype(numpy.float32)`")]
    Dtype { path: PathBuf, found: String },
    #[error("{path}: array is in Fortran order (fortran_order: True); only C order is supported")]
    FortranOrder { path: PathBuf },
    #[error("{path}: truncated data: shape {shape:?} of `{dtype}` needs {expected} bytes, found {found}")]
    Truncated {
        path: PathBuf,
        shape: Vec<usize>,
        dtype: String,
        expected: usize,
        found: usize,
    },
    #[error("{path}: {extra} unexpected bytes after the data of shape {shape:?} of `{dtype}` ({expected} bytes)")]
    TrailingBytes {
        path: PathBuf,
        shape: Vec<usize>,
        dtype: String,
        expected: usize,
        extra: usize,
    },
    #[error("{path}: shape {shape:?} has {expected} elements but {found} values were given")]
    ShapeMismatch {
        path: PathBuf,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("{path}: shape {shape:?} is too large")]
    TooLarge { path: PathBuf, shape: Vec<usize> },
}

/// Element types that are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F4,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        (descr == "<f4").then_some(Dtype::F4)
    }

    fn size(self) -> usize {
        4
    }

    fn decode(self, bytes: &[u8]) -> f32 {
        f32::from_le_bytes(bytes.try_into().unwrap())
    }
}

/// Reads a `.npy` file into (shape, values in C order). See the module doc for the types.
pub fn read_f32(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_owned(),
        action: "cannot read",
        source,
    })?;
    parse_f32(&bytes, path)
}

/// Parses the bytes of a `.npy` file; `path` is only used in errors.
pub fn parse_f32(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let header_err = |reason: String| NpyError::Header {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(NpyError::Magic {
            path: path.to_owned(),
        });
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return Err(header_err("file ends inside the preamble".into())),
    };
    let (len_size, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        _ => {
            return Err(NpyError::Version {
                path: path.to_owned(),
                major,
                minor,
            })
        }
    };
    let start = 8 + len_size;
    let len_bytes = bytes
        .get(8..start)
        .ok_or_else(|| header_err("file ends inside the header length".into()))?;
    let header_len = if len_size == 2 {
        u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize
    } else {
        u32::from_le_bytes(len_bytes.try_into().unwrap()) as usize
    };
    let header = bytes.get(start..start + header_len).ok_or_else(|| {
        header_err(format!(
            "header of {header_len} bytes announced, the file has {} after the preamble",
            bytes.len() - start
        ))
    })?;
    let header = if utf8 {
        std::str::from_utf8(header).map_err(|e| header_err(format!("not UTF-8: {e}")))?
    } else {
        if !header.is_ascii() {
            return Err(header_err("not ASCII".into()));
        }
        std::str::from_utf8(header).unwrap()
    };
    let fields = parse_header(header).map_err(header_err)?;
    let dtype = Dtype::parse(&fields.descr).ok_or_else(|| NpyError::Dtype {
        path: path.to_owned(),
        found: fields.descr.clone(),
    })?;
    if fields.fortran_order {
        return Err(NpyError::FortranOrder {
            path: path.to_owned(),
        });
    }
    let shape = fields.shape;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()).map(|b| (n, b)));
    let (count, expected) = count.ok_or_else(|| NpyError::TooLarge {
        path: path.to_owned(),
        shape: shape.clone(),
    })?;
    let data = &bytes[start + header_len..];
    if data.len() < expected {
        return Err(NpyError::Truncated {
            path: path.to_owned(),
            shape,
            dtype: fields.descr,
            expected,
            found: data.len(),
        });
    }
    if data.len() > expected {
        return Err(NpyError::TrailingBytes {
            path: path.to_owned(),
            shape,
            dtype: fields.descr,
            expected,
            extra: data.len() - expected,
        });
    }
    let mut values = Vec::with_capacity(count);
    values.extend(data.chunks_exact(dtype.size()).map(|b| dtype.decode(b)));
    Ok((shape, values))
}

/// Writes `data` (C order) with `shape` as a version-1.0 `<f4` `.npy` file, atomically:
/// a temporary file next to `path` is written, synced and renamed over `path`.
pub fn write_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let path = path.as_ref();
    let bytes = encode_f32(shape, data, path)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "array.npy".into());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let io = |action: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| NpyError::Io {
            path: p,
            action,
            source,
        }
    };
    let result = (|| {
        let mut file = fs::File::create(&tmp).map_err(io("cannot create temporary file", &tmp))?;
        file.write_all(&bytes)
            .map_err(io("cannot write temporary file", &tmp))?;
        file.sync_all()
            .map_err(io("cannot sync temporary file", &tmp))?;
        fs::rename(&tmp, path).map_err(io("cannot rename temporary file onto", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The bytes of a `<f4` C-order `.npy` file (version 1.0, or 2.0 for a huge header).
pub fn encode_f32(shape: &[usize], data: &[f32], path: &Path) -> Result<Vec<u8>, NpyError> {
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::TooLarge {
            path: path.to_owned(),
            shape: shape.to_vec(),
        })?;
    if expected != data.len() {
        return Err(NpyError::ShapeMismatch {
            path: path.to_owned(),
            shape: shape.to_vec(),
            expected,
            found: data.len(),
        });
    }
    let dims = match shape {
        [] => String::new(),
        [d] => format!("{d},"),
        _ => shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Preamble + header + '\n' is padded to a multiple of 64 bytes.
    let (version, preamble) = if header.len() + 1 + 10 <= u16::MAX as usize {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (preamble + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(
        ' ',
        total - preamble - header.len() - 1,
    ));
    header.push('\n');
    let mut out = Vec::with_capacity(total + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the header dict: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Parser {
        s: text.trim_end().as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran_order = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unknown key '{other}'")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after the dict at byte {}", p.i));
    }
    Ok(Header {
        descr: descr.ok_or("missing key 'descr'")?,
        fortran_order: fortran_order.ok_or("missing key 'fortran_order'")?,
        shape: shape.ok_or("missing key 'shape'")?,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.i)),
        };
        let start = self.i + 1;
        let end = self.s[start..]
            .iter()
            .position(|&c| c == quote)
            .ok_or("unterminated string")?
            + start;
        self.i = end + 1;
        Ok(String::from_utf8_lossy(&self.s[start..end]).into_owned())
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_ws();
        for (word, value) in [("True", true), ("False", false)] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(value);
            }
        }
        Err(format!("expected True or False at byte {}", self.i))
    }

    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = vec![];
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            self.skip_ws();
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            // Python 2 era files may write long integers as `3L`.
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap();
            let _ = self.eat(b'L');
            let dim = digits
                .parse::<usize>()
                .map_err(|_| format!("expected a dimension at byte {start}"))?;
            dims.push(dim);
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gm-npy-tests-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// A .npy file as numpy writes it (version 1.0, 64-byte aligned header).
    fn npy_bytes(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let order = if fortran { "True" } else { "False" };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn le_bytes<const N: usize, T: Copy>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| f(v)).collect()
    }

    #[test]
    fn round_trip_f32() {
        let path = tmp_path("round_trip.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_f32(&path, &[2, 3, 4], &data).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        assert_eq!(
            std::str::from_utf8(&bytes[10..10 + header_len])
                .unwrap()
                .trim_end(),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }"
        );
        let (shape, back) = read_f32(&path).unwrap();
        assert_eq!(shape, [2, 3, 4]);
        assert_eq!(back, data);
        // no temporary file is left behind
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn scalar_vector_and_empty_shapes() {
        for (shape, text) in [(vec![], "()"), (vec![5], "(5,)"), (vec![0, 3], "(0, 3)")] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let bytes = encode_f32(&shape, &data, Path::new("x.npy")).unwrap();
            let text_found = String::from_utf8_lossy(&bytes[10..]).into_owned();
            assert!(
                text_found.contains(&format!("'shape': {text}")),
                "{text_found}"
            );
            let (s, d) = parse_f32(&bytes, Path::new("x.npy")).unwrap();
            assert_eq!((s, d), (shape, data));
        }
    }

    #[test]
    fn reads_float32_and_rejects_other_dtypes() {
        let p = Path::new("conv.npy");
        let f4 = npy_bytes(
            "<f4",
            false,
            "(2,)",
            &le_bytes(&[1.5f32, -2.0], f32::to_le_bytes),
        );
        assert_eq!(parse_f32(&f4, p).unwrap(), (vec![2], vec![1.5, -2.0]));
        for (descr, width) in [("<f8", 8), ("<f2", 2), ("<i8", 8), (">f4", 4)] {
            let bytes = npy_bytes(descr, false, "(1,)", &vec![0u8; width]);
            let err = parse_f32(&bytes, p).unwrap_err().to_string();
            assert!(err.contains(descr) && err.contains("<f4"), "{err}");
        }
        // version 2.0 header with double quotes and no trailing comma
        let header = "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1,)}\n";
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&(header.len() as u32).to_le_bytes());
        v2.extend_from_slice(header.as_bytes());
        v2.extend_from_slice(&3.25f32.to_le_bytes());
        assert_eq!(parse_f32(&v2, p).unwrap(), (vec![1], vec![3.25]));
    }

    #[test]
    fn errors_name_file_and_problem() {
        let p = Path::new("/data/bad.npy");
        let err = |bytes: &[u8]| parse_f32(bytes, p).unwrap_err().to_string();

        let e = err(&npy_bytes(">f4", false, "(1,)", &[0; 4]));
        assert!(
            e.contains("/data/bad.npy") && e.contains("`>f4`") && e.contains("`<f4`"),
            "{e}"
        );
        let e = err(&npy_bytes("<i4", false, "(1,)", &[0; 4]));
        assert!(e.contains("`<i4`"), "{e}");
        let e = err(&npy_bytes("<f4", true, "(2, 2)", &[0; 16]));
        assert!(e.contains("Fortran"), "{e}");
        let e = err(&npy_bytes("<f4", false, "(2, 3)", &[0; 20]));
        assert!(
            e.contains("truncated") && e.contains("needs 24 bytes, found 20"),
            "{e}"
        );
        let e = err(&npy_bytes("<f4", false, "(1,)", &[0; 8]));
        assert!(e.contains("4 unexpected bytes"), "{e}");
        let e = err(b"PK\x03\x04 not npy");
        assert!(e.contains("not a .npy file"), "{e}");
        let e = err(b"\x93NUMPY\x04\x00\x00\x00");
        assert!(e.contains("version 4.0"), "{e}");
        let e = err(&npy_bytes("<f4", false, "[1]", &[0; 4]));
        assert!(e.contains("malformed header"), "{e}");

        let e = read_f32("/nonexistent/dir/x.npy").unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/dir/x.npy") && e.contains("cannot read"),
            "{e}"
        );
        let e = write_f32(tmp_path("mismatch.npy"), &[2, 2], &[1.0; 3])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mismatch.npy") && e.contains("4 elements but 3 values"),
            "{e}"
        );
    }
}
