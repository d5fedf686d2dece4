//! Image files to model input: decoding, and the official evaluation transform.
//!
//! The official evaluation (torchvision on PIL images) is: open, `convert('RGB')`,
//! `Resize(s)` (shorter side to `s`, bicubic, antialiased), `CenterCrop(h, w)`, `ToTensor`
//! (/255), `Normalize(mean, std)`. [`transform`] reproduces it as a pure function of the decoded
//! RGB pixels; [`Preprocessing`] holds its parameters, read from the `groupmamba.preprocessing`
//! metadata that gm-export writes into every model, so a model exported at another size gets the
//! transform it was exported for. The resize is [`resample`]'s, which matches Pillow bit for bit.
//!
//! Decoding (JPEG, PNG, WebP) differs from a plain `Image.open(f).convert('RGB')` in two
//! deliberate ways: the EXIF orientation is applied (a phone photo is classified upright, as
//! `ImageOps.exif_transpose` would show it), and 16-bit grayscale keeps its high byte, as PIL does
//! for 16-bit colour, where PIL would clamp every value above 255 to white.

pub mod jpeg;
pub mod resample;

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// What can go wrong turning a file into a model input. Every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a JPEG, PNG or WebP image ({found})")]
    NotAnImage { path: PathBuf, found: String },
    #[error("{path}: the image is {width}×{height} ({megapixels:.1} megapixels), above the limit of {limit} megapixels")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        megapixels: f64,
        limit: f64,
    },
    #[error("{path}: the image has no pixels ({width}×{height})")]
    Empty {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("{path}: cannot decode the {format} image: {message}")]
    Decode {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("preprocessing metadata: {0}")]
    Metadata(String),
}

/// The ImageNet mean and standard deviation (timm's defaults) that the official models use.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Parameters of the evaluation transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// The shorter side after resizing (the longer one keeps the aspect ratio).
    pub resize_shorter_side: usize,
    /// Height and width of the center crop: the model's input size.
    pub crop: [usize; 2],
    /// Per-channel (RGB) mean and standard deviation, applied after scaling to [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocessing {
    /// The official transform for a `crop` input: resize to ⌊min(h, w)·256/224⌋, ImageNet statistics.
    pub fn official(crop: [usize; 2]) -> Self {
        let shorter = crop[0].min(crop[1]);
        Preprocessing {
            resize_shorter_side: (shorter as f64 / (224.0 / 256.0)) as usize,
            crop,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Reads gm-export's `groupmamba.preprocessing` JSON. Refuses what this transform does not
    /// implement (another interpolation, no antialiasing, another colour order or scale) rather
    /// than silently feeding the model differently prepared inputs.
    pub fn from_metadata_json(json: &str) -> Result<Self, ImageError> {
        let bad = |m: String| ImageError::Metadata(m);
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let uint = |key: &str, v: &serde_json::Value| -> Result<usize, ImageError> {
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| bad(format!("`{key}` must be a positive integer, found {v}")))
        };
        let field = |key: &str| v.get(key).ok_or_else(|| bad(format!("`{key}` is missing")));
        let resize_shorter_side = uint("resize_shorter_side", field("resize_shorter_side")?)?;
        let crop = match field("center_crop")?.as_array().map(Vec::as_slice) {
            Some([h, w]) => [uint("center_crop", h)?, uint("center_crop", w)?],
            _ => return Err(bad("`center_crop` must be [height, width]".into())),
        };
        let expect = |key: &str, want: serde_json::Value, required: bool| match v.get(key) {
            None if !required => Ok(()),
            Some(found) if *found == want => Ok(()),
            found => Err(bad(format!(
                "`{key}` is {}, but only {want} is implemented",
                found.map_or("missing".to_string(), |f| f.to_string())
            ))),
        };
        expect("interpolation", "bicubic".into(), true)?;
        expect("antialias", true.into(), false)?;
        expect("color", "RGB".into(), false)?;
        if let Some(scale) = v.get("scale") {
            let ok = scale
                .as_f64()
                .is_some_and(|s| (s * 255.0 - 1.0).abs() < 1e-9);
            if !ok {
                return Err(bad(format!(
                    "`scale` is {scale}, but only 1/255 is implemented"
                )));
            }
        }
        let triple = |key: &str| -> Result<[f32; 3], ImageError> {
            let arr = field(key)?.as_array().filter(|a| a.len() == 3);
            let nums: Option<Vec<f32>> =
                arr.and_then(|a| a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect());
            match nums.as_deref() {
                Some(&[a, b, c]) if key != "std" || (a > 0.0 && b > 0.0 && c > 0.0) => {
                    Ok([a, b, c])
                }
                _ => Err(bad(format!("`{key}` must be three numbers (R, G, B)"))),
            }
        };
        if resize_shorter_side < crop[0].min(crop[1]) {
            // Legal for torchvision (CenterCrop pads), but never what gm-export writes.
            return Err(bad(format!(
                "resize_shorter_side {resize_shorter_side} is smaller than the crop {crop:?}"
            )));
        }
        Ok(Preprocessing {
            resize_shorter_side,
            crop,
            mean: triple("mean")?,
            std: triple("std")?,
        })
    }
}

/// A decoded image: 8-bit RGB, interleaved, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Limits checked from the file header, before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Largest accepted width × height.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 100 megapixels: any camera photo, while a hostile header (65535×65535 JPEG, say) is refused
    /// before it makes us allocate gigabytes.
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 100_000_000,
        }
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        _ => "other",
    }
}

/// Decodes a JPEG, PNG or WebP file to RGB, with its EXIF orientation applied.
///
/// The format comes from the file's content, not its name. The dimensions are read from the
/// header and checked against `limits` before decoding, and the decoder's own allocation limit
/// is set from them, so memory stays bounded whatever the file claims. JPEG pixels come from
/// libjpeg-turbo ([`jpeg`]), everything else from the `image` crate.
pub fn decode(path: &Path, limits: &DecodeLimits) -> Result<Rgb8, ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    // No compressed image is larger than its pixels at 16 bits × 4 channels: anything bigger is
    // refused before it is read into memory.
    let max_bytes = limits.max_pixels.saturating_mul(8).max(64 << 20);
    let size = fs::metadata(path).map_err(io)?.len();
    if size > max_bytes {
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
            found: format!("{size} bytes, more than any image within the size limit"),
        });
    }
    let bytes = fs::read(path).map_err(io)?;
    let mut reader = ImageReader::new(Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(io)?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
        Some(other) => {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                found: format!("{other:?} is not supported"),
            })
        }
        None => {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                found: if bytes.is_empty() {
                    "empty file".to_string()
                } else {
                    "unrecognised content".to_string()
                },
            })
        }
    };
    let decode_err = |message: String| ImageError::Decode {
        path: path.to_path_buf(),
        format: format_name(format),
        message,
    };
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(max_bytes);
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_err(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(ImageError::Empty {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            megapixels: pixels as f64 / 1e6,
            limit: limits.max_pixels as f64 / 1e6,
        });
    }
    // A broken EXIF block is not worth refusing the picture for: keep it as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(::image::metadata::Orientation::NoTransforms);
    let jpeg = match format {
        ImageFormat::Jpeg => jpeg::decode_rgb(&bytes).map_err(decode_err)?,
        _ => None,
    };
    let img = match jpeg {
        Some((w, h, data)) => {
            let buf = ::image::RgbImage::from_raw(w as u32, h as u32, data)
                .ok_or_else(|| decode_err("libjpeg returned a short image".to_string()))?;
            DynamicImage::ImageRgb8(buf)
        }
        // PNG, WebP, and the CMYK/YCCK JPEGs that libjpeg does not turn into RGB.
        None => DynamicImage::from_decoder(decoder).map_err(|e| decode_err(e.to_string()))?,
    };
    let mut img = img;
    img.apply_orientation(orientation);
    Ok(to_rgb8(img))
}

/// RGB conversion as PIL's `convert('RGB')`: gray is replicated, alpha is dropped (not composited
/// over a background), 16-bit samples keep their high byte (what PIL reads from 16-bit PNGs).
fn to_rgb8(img: DynamicImage) -> Rgb8 {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        DynamicImage::ImageLuma8(b) => b.into_raw().iter().flat_map(|&g| [g; 3]).collect(),
        DynamicImage::ImageLumaA8(b) => b
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0]; 3])
            .collect(),
        DynamicImage::ImageRgb16(b) => b.into_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => b
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        DynamicImage::ImageLuma16(b) => b
            .into_raw()
            .iter()
            .flat_map(|&g| [(g >> 8) as u8; 3])
            .collect(),
        DynamicImage::ImageLumaA16(b) => b
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [(p[0] >> 8) as u8; 3])
            .collect(),
        // Not produced by the JPEG, PNG or WebP decoders; converted the library's way.
        other => other.to_rgb8().into_raw(),
    };
    Rgb8 {
        width,
        height,
        data,
    }
}

/// Output size of torchvision's `Resize(shorter)` for a `width × height` image: the shorter side
/// becomes `shorter`, the longer ⌊shorter·long/short⌋ (truncated, as torchvision computes it in
/// floating point); a square stays square.
pub fn resized_size(width: usize, height: usize, shorter: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((shorter * long) as f64 / short as f64) as usize;
    if width <= height {
        (shorter, new_long)
    } else {
        (new_long, shorter)
    }
}

/// Offset of torchvision's `CenterCrop` along one axis: `int(round((size − crop) / 2))`, where
/// Python rounds halves to even (an odd excess of 33 gives 16, of 35 gives 18). `size >= crop`.
pub fn center_crop_offset(size: usize, crop: usize) -> usize {
    let excess = size - crop;
    let half = excess / 2;
    if excess % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// The evaluation transform: resize (shorter side, Pillow bicubic), center crop, /255,
/// normalise. Returns the `[3, crop_h, crop_w]` float32 tensor, channel-major.
///
/// Where the resized image is smaller than the crop (possible only for non-square crops), it is
/// padded with black on both sides first, as torchvision's `CenterCrop` does.
pub fn transform(img: &Rgb8, p: &Preprocessing) -> Vec<f32> {
    let (rw, rh) = resized_size(img.width, img.height, p.resize_shorter_side);
    let resized = resample::resize_rgb8(&img.data, img.width, img.height, rw, rh);
    let [ch, cw] = p.crop;
    // torchvision pads (left/top get the floor of half the shortfall) then crops the centre.
    let (pad_x, pad_y) = (cw.saturating_sub(rw) / 2, ch.saturating_sub(rh) / 2);
    let (pw, ph) = (rw.max(cw), rh.max(ch));
    let (x0, y0) = (center_crop_offset(pw, cw), center_crop_offset(ph, ch));
    // ToTensor divides by 255 in float32; Normalize subtracts the mean, then divides by std.
    let lut: Vec<[f32; 3]> = (0..=255u8)
        .map(|v| {
            let x = f32::from(v) / 255.0;
            [0, 1, 2].map(|c| (x - p.mean[c]) / p.std[c])
        })
        .collect();
    let plane = ch * cw;
    let mut out = vec![0f32; 3 * plane];
    for y in 0..ch {
        for x in 0..cw {
            // Position in the padded image → position in the resized one (None: padding).
            let sy = (y + y0).checked_sub(pad_y).filter(|&v| v < rh);
            let sx = (x + x0).checked_sub(pad_x).filter(|&v| v < rw);
            let rgb = match (sy, sx) {
                (Some(sy), Some(sx)) => {
                    let i = (sy * rw + sx) * 3;
                    [resized[i], resized[i + 1], resized[i + 2]]
                }
                _ => [0, 0, 0],
            };
            for c in 0..3 {
                out[c * plane + y * cw + x] = lut[usize::from(rgb[c])][c];
            }
        }
    }
    out
}

/// Decodes `path` and applies the transform: one `[3, H, W]` input.
pub fn load(path: &Path, p: &Preprocessing, limits: &DecodeLimits) -> Result<Vec<f32>, ImageError> {
    Ok(transform(&decode(path, limits)?, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_rule_matches_torchvision() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(300, 300, 256), (256, 256));
        assert_eq!(resized_size(100, 40, 256), (640, 256));
        assert_eq!(resized_size(64, 64, 73), (73, 73));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        assert_eq!(center_crop_offset(256, 224), 16);
        assert_eq!(center_crop_offset(257, 224), 16); // 16.5 → 16
        assert_eq!(center_crop_offset(259, 224), 18); // 17.5 → 18
        assert_eq!(center_crop_offset(258, 224), 17);
        assert_eq!(center_crop_offset(224, 224), 0);
        assert_eq!(center_crop_offset(225, 224), 0); // 0.5 → 0
        assert_eq!(center_crop_offset(227, 224), 2); // 1.5 → 2
    }

    #[test]
    fn official_sizes() {
        let p = Preprocessing::official([224, 224]);
        assert_eq!(p.resize_shorter_side, 256);
        assert_eq!(Preprocessing::official([64, 64]).resize_shorter_side, 73);
        assert_eq!(Preprocessing::official([72, 100]).resize_shorter_side, 82);
    }

    #[test]
    fn metadata_round_trip_and_refusals() {
        let ok = r#"{"resize_shorter_side":256,"interpolation":"bicubic","antialias":true,
            "center_crop":[224,224],"color":"RGB","scale":0.00392156862745098,
            "mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225]}"#;
        assert_eq!(
            Preprocessing::from_metadata_json(ok).unwrap(),
            Preprocessing::official([224, 224])
        );
        for (from, to) in [
            ("bicubic", "bilinear"),
            ("\"antialias\":true", "\"antialias\":false"),
            ("[224,224]", "[224]"),
            ("0.00392156862745098", "1.0"),
            ("[0.229,0.224,0.225]", "[0.229,0,0.225]"),
            ("\"resize_shorter_side\":256", "\"resize_shorter_side\":200"),
        ] {
            let bad = ok.replace(from, to);
            assert!(
                Preprocessing::from_metadata_json(&bad).is_err(),
                "accepted {bad}"
            );
        }
    }

    #[test]
    fn transform_normalises_and_crops_the_centre() {
        // 4×2 image, left half black, right half white; crop 2×2 of a resize to shorter side 2.
        let mut data = Vec::new();
        for _ in 0..2 {
            for x in 0..4 {
                data.extend_from_slice(&[if x < 2 { 0 } else { 255 }; 3]);
            }
        }
        let img = Rgb8 {
            width: 4,
            height: 2,
            data,
        };
        let p = Preprocessing {
            resize_shorter_side: 2,
            crop: [2, 2],
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let t = transform(&img, &p);
        assert_eq!(t.len(), 12);
        // Columns 1 and 2 of the unresized image: black then white, normalised to −1 and 1.
        assert_eq!(&t[..4], &[-1.0, 1.0, -1.0, 1.0]);
    }

    #[test]
    fn narrow_resize_is_padded_black() {
        // Portrait image, non-square crop wider than the resized width: torchvision pads.
        let img = Rgb8 {
            width: 2,
            height: 4,
            data: vec![255; 2 * 4 * 3],
        };
        let p = Preprocessing {
            resize_shorter_side: 2,
            crop: [2, 4],
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let t = transform(&img, &p);
        assert_eq!(&t[..8], &[0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    }
}
