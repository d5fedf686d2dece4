//! JPEG pixels through libjpeg-turbo's decoder, the one Pillow uses.
//!
//! Why not the `image` crate's decoder (zune-jpeg) for the pixels: JPEG leaves the IDCT rounding
//! and the chroma upsampling to the implementation, and zune-jpeg (by its own statement) does not
//! aim for libjpeg's results. On 4:2:0 files it lands up to 4 levels off Pillow's pixels, about
//! 0.07 after normalisation, where our tolerance is 1e-2. libjpeg-turbo (compiled from source by
//! `mozjpeg-sys`, without SIMD, so no assembler is needed; its SIMD and C paths give the same
//! results) with the library defaults Pillow keeps (accurate integer IDCT, fancy upsampling)
//! reproduces Pillow's pixels exactly. The `image` crate still reads the header (format,
//! dimensions, EXIF orientation) before this runs.
//!
//! Errors: libjpeg reports fatal errors through `error_exit`, which must not return; ours unwinds
//! (`resume_unwind`, so no panic message is printed) and [`decode_rgb`] catches it. Warnings are
//! silent, except running out of data, which Pillow refuses ("image file is truncated") and so do
//! we.

use std::cell::Cell;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg::{ColorSpace, Decompress};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error, JWRN_JPEG_EOF};

thread_local! {
    /// Set by [`on_message`] when the data ended before the image did (decoding is on one thread).
    static TRUNCATED: Cell<bool> = const { Cell::new(false) };
}

/// libjpeg's `emit_message`: only notes a premature end of data (level −1 is a warning).
unsafe extern "C-unwind" fn on_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: libjpeg calls this with its own `cinfo`, whose `err` points at our live manager.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == JWRN_JPEG_EOF as c_int {
        TRUNCATED.with(|t| t.set(true));
    }
}

/// libjpeg's `error_exit`: formats the message and unwinds out of the C code.
unsafe extern "C-unwind" fn on_error(cinfo: &mut jpeg_common_struct) {
    // libjpeg writes up to JMSG_LENGTH_MAX (200) bytes; the binding declares 80, so the buffer is
    // passed through a pointer-typed alias of the same function.
    type Format = unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8);
    let mut buffer = [0u8; 256];
    // SAFETY: as above; `format_message` was set by `jpeg_std_error` and takes (cinfo, char *).
    let message = unsafe {
        match (*cinfo.err).format_message {
            Some(f) => {
                let f: Format = std::mem::transmute(f);
                f(cinfo, buffer.as_mut_ptr());
                let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
                String::from_utf8_lossy(&buffer[..end]).into_owned()
            }
            None => format!("libjpeg error {}", (*cinfo.err).msg_code),
        }
    };
    std::panic::resume_unwind(Box::new(message));
}

fn error_manager() -> jpeg_error_mgr {
    // SAFETY: `jpeg_error_mgr` is a plain C struct; `jpeg_std_error` fills in every field.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg_std_error(&mut err) };
    err.error_exit = Some(on_error);
    err.emit_message = Some(on_message);
    err
}

/// A JPEG decoded to interleaved 8-bit RGB: `(width, height, pixels)`.
pub type Decoded = (usize, usize, Vec<u8>);

/// Decodes a JPEG held in memory to RGB (grayscale is replicated, as Pillow's `convert('RGB')`
/// does). `Ok(None)` for CMYK and YCCK files, which libjpeg does not convert to RGB: the caller
/// falls back to another decoder.
pub fn decode_rgb(data: &[u8]) -> Result<Option<Decoded>, String> {
    TRUNCATED.with(|t| t.set(false));
    let result = catch_unwind(AssertUnwindSafe(|| -> std::io::Result<Option<Decoded>> {
        let d = Decompress::with_err(error_manager()).from_mem(data)?;
        if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
            return Ok(None);
        }
        let mut img = d.rgb()?;
        let (width, height) = (img.width(), img.height());
        let pixels = img.read_scanlines::<u8>()?;
        if TRUNCATED.with(Cell::get) {
            return Err(std::io::Error::other(
                "the file is truncated (the JPEG data ends before the image does)",
            ));
        }
        // Reads on to the end-of-image marker; a file that lacks only that marker is accepted,
        // as Pillow accepts it.
        img.finish()?;
        Ok(Some((width, height, pixels)))
    }));
    match result {
        Ok(Ok(decoded)) => Ok(decoded),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "libjpeg failed".to_string())),
    }
}
