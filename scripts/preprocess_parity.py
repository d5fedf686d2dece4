#!/usr/bin/env python3
"""Preprocessing parity: gm-run's image pipeline (Rust) against PIL + torchvision's evaluation transform.

    python3 scripts/preprocess_parity.py [--model M.onnx ...] [--tol 1e-2]

1. Generates test images into target/preprocess-parity/images: several sizes and aspect ratios
   (smaller than the resize too), JPEG (4:2:0, 4:4:4, progressive, grayscale), EXIF-rotated JPEGs,
   PNG (RGB, RGBA, gray, gray+alpha, palette, 16-bit RGB, 16-bit gray), WebP (lossless, lossy).
2. Computes the reference tensors with PIL alone, following torchvision's code for the official
   transform (no torch needed): Resize(s) on a PIL image is `img.resize((w, h), Image.BICUBIC)` with
   the shorter side s and the longer int(s * long / short); CenterCrop pads with 0 if needed, then
   crops at int(round((size - crop) / 2.0)); ToTensor is /255 in float32; Normalize subtracts the mean
   and divides by the std. Images are opened as torchvision's loader does (`convert('RGB')`) after
   `ImageOps.exif_transpose`, because gm-run applies the EXIF orientation.
3. Runs the Rust pipeline (the `preprocess` example of gm-runtime) on the same files, for the official
   224 transform (resize 256) and the 64x64 one (resize 73), and prints the max abs difference of the
   normalised tensors per image; fails if any exceeds --tol (1e-2: PIL's resampling is 8-bit, so one
   level is 1/255/std = 0.017 and anything under the tolerance means the same 8-bit pixels).
4. A sweep of random sizes and resize targets (PNG and JPEG), compared on the whole resized image.
5. For each --model (an exported .onnx, e.g. a fixture checkpoint's), stacks the reference tensors at the
   model's own preprocessing (its groupmamba.preprocessing metadata), runs them with `gm-run --input`, runs
   `gm-run classify` on the image files, and checks that the top-1 class of every image is the same.

One deliberate difference, not a parity failure: for 16-bit grayscale PNGs PIL's `convert('RGB')` clamps
each 16-bit value to 255 (a white image); gm-run keeps the high byte, as PIL itself does for 16-bit
colour PNGs. That file's reference is made the gm-run way and is marked as such in the report.

Exit status: 0 all within tolerance (and top-1 equal), 1 otherwise, 2 on a usage or tool error.
"""

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image, ImageOps

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HIGH_BYTE_REFERENCE = "gray16.png"  # see the module docstring


# ---------------------------------------------------------------------------------------------------
# Test images


def scene(w, h, seed):
    """A deterministic picture with smooth gradients, hard edges and fine texture: what makes resampling
    filters disagree if they are not the same."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 120 * np.sin(x / max(w, 1) * 6.3 + seed)
    g = 127 + 120 * np.cos(y / max(h, 1) * 4.1 - seed)
    b = 255 * ((x // 13 + y // 17) % 2)  # checkerboard: hard edges
    img = np.stack([r, g, b], axis=-1)
    cx, cy, rad = w * 0.6, h * 0.4, min(w, h) * 0.25
    disc = (x - cx) ** 2 + (y - cy) ** 2 < rad**2
    img[disc] = [250, 30, 60]
    img += rng.normal(0, 12, img.shape)  # fine texture
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_png16(path, arr):
    """A 16-bit PNG (gray if 2-D, RGB if HxWx3) written by hand: PIL cannot save 16-bit colour."""
    h, w = arr.shape[:2]
    color_type = 0 if arr.ndim == 2 else 2
    rows = arr.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def exif_with_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def make_images(folder):
    os.makedirs(folder, exist_ok=True)
    made = []

    def save(name, img, **kw):
        path = os.path.join(folder, name)
        img.save(path, **kw)
        made.append(path)

    rgb = lambda w, h, seed: Image.fromarray(scene(w, h, seed), "RGB")  # noqa: E731
    save("landscape_500x375.jpg", rgb(500, 375, 1), quality=90)
    save("portrait_375x500.png", rgb(375, 500, 2))
    save("large_3000x2000_q85.jpg", rgb(3000, 2000, 3), quality=85)
    save("jpeg444_640x480.jpg", rgb(640, 480, 4), quality=95, subsampling=0)
    save("progressive_800x600.jpg", rgb(800, 600, 5), quality=90, progressive=True)
    save("small_200x150.png", rgb(200, 150, 6))
    save("tiny_31x17.png", rgb(31, 17, 7))
    save("wide_1000x123.png", rgb(1000, 123, 8))
    save("odd_257x300.png", rgb(257, 300, 9))  # crop offset 16.5 → 16
    save("odd_259x1001.png", rgb(259, 1001, 10))
    save("square_256.png", rgb(256, 256, 11))  # resize is the identity
    save("square_224.png", rgb(224, 224, 12))
    save("gray_400x300.jpg", rgb(400, 300, 13).convert("L"), quality=90)
    save("gray_300x400.png", rgb(300, 400, 14).convert("L"))
    rgba = rgb(320, 240, 15).convert("RGBA")
    alpha = np.fromfunction(lambda y, x: (x * 255 / 319), (240, 320)).astype(np.uint8)
    rgba.putalpha(Image.fromarray(alpha, "L"))
    save("rgba_320x240.png", rgba)
    la = rgb(240, 320, 16).convert("LA")
    save("gray_alpha_240x320.png", la)
    save("palette_300x200.png", rgb(300, 200, 17).quantize(64))
    # EXIF orientation: 6 (rotate 90° clockwise to view), 3 (180°), 8 (90° counter-clockwise).
    for value in (6, 3, 8):
        save(f"exif{value}_480x360.jpg", rgb(480, 360, 20 + value), quality=90, exif=exif_with_orientation(value))
    path = os.path.join(folder, "rgb16_300x250.png")
    base = scene(300, 250, 30).astype(np.uint16)
    write_png16(path, base * 257 + np.random.default_rng(31).integers(0, 257, base.shape, dtype=np.uint16))
    made.append(path)
    path = os.path.join(folder, HIGH_BYTE_REFERENCE)
    gray = np.asarray(rgb(260, 270, 32).convert("L")).astype(np.uint16) * 257
    write_png16(path, gray)
    made.append(path)
    save("lossless_350x300.webp", rgb(350, 300, 40), lossless=True)
    save("lossy_350x300.webp", rgb(350, 300, 41), quality=85)
    return sorted(made)


# ---------------------------------------------------------------------------------------------------
# Reference: PIL + torchvision semantics


def open_rgb(path):
    """torchvision's loader (`Image.open(f).convert('RGB')`), after applying the EXIF orientation."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    img = ImageOps.exif_transpose(img)
    if os.path.basename(path) == HIGH_BYTE_REFERENCE:
        # PIL would clamp (0..65535 → 0..255); gm-run keeps the high byte. See the docstring.
        img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8), "L")
    return img.convert("RGB")


def torchvision_resize(img, shorter):
    """torchvision.transforms.Resize(shorter) on a PIL image (_compute_resized_output_size)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = shorter, int(shorter * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BICUBIC)


def torchvision_center_crop(img, crop_h, crop_w):
    """torchvision.transforms.CenterCrop((crop_h, crop_w)) on a PIL image."""
    w, h = img.size
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        padded = Image.new("RGB", (w + left + right, h + top + bottom), (0, 0, 0))
        padded.paste(img, (left, top))
        img = padded
        w, h = img.size
        if (w, h) == (crop_w, crop_h):
            return img
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def reference(path, resize, crop_h, crop_w, mean=MEAN, std=STD):
    img = torchvision_center_crop(torchvision_resize(open_rgb(path), resize), crop_h, crop_w)
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)  # ToTensor
    x = (x - mean) / std  # Normalize (float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)  # [1, 3, H, W]


# ---------------------------------------------------------------------------------------------------


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return proc


def rust_tensors(tool, files, resize, crop_h, crop_w, out):
    os.makedirs(out, exist_ok=True)
    proc = run([tool, "--resize", str(resize), "--crop", f"{crop_h}x{crop_w}", "--out", out, *files])
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"error: {tool} failed (exit {proc.returncode})")
    return {f: np.load(os.path.join(out, os.path.basename(f) + ".npy")) for f in files}


def model_preprocessing(model_path):
    import onnx

    model = onnx.load(model_path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "groupmamba.preprocessing" not in meta:
        raise SystemExit(f"error: {model_path} has no groupmamba.preprocessing metadata")
    return json.loads(meta["groupmamba.preprocessing"])


def check_model(model, files, gm_run, work):
    """Top-1 of gm-run classify (Rust preprocessing) vs top-1 of the model on the reference tensors."""
    meta = model_preprocessing(model)
    (crop_h, crop_w), resize = meta["center_crop"], meta["resize_shorter_side"]
    mean = np.array(meta["mean"], dtype=np.float32)
    std = np.array(meta["std"], dtype=np.float32)
    batch = np.concatenate([reference(f, resize, crop_h, crop_w, mean, std) for f in files])
    os.makedirs(work, exist_ok=True)
    ref_in, ref_out = os.path.join(work, "reference_input.npy"), os.path.join(work, "reference_logits.npy")
    np.save(ref_in, batch)
    proc = run([gm_run, "--model", model, "--input", ref_in, "--output", ref_out, "--backend", "tract"])
    if proc.returncode != 0:
        raise SystemExit(f"error: gm-run --input failed: {proc.stderr.strip()}")
    ref_logits = np.load(ref_out)
    proc = run([gm_run, "classify", "--model", model, "--backend", "tract", "--topk", "1", "--json", *files])
    if proc.returncode != 0:
        raise SystemExit(f"error: gm-run classify failed (exit {proc.returncode}): {proc.stderr.strip()}")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    ours = {r["path"]: r["topk"][0]["index"] for r in records}
    mismatches = 0
    for i, f in enumerate(files):
        want = int(np.argmax(ref_logits[i]))
        got = ours.get(f)
        ok = got == want
        mismatches += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {os.path.basename(f):28s} top-1 reference {want:4d}, gm-run classify {got}")
    print(f"{os.path.basename(model)} (resize {resize}, crop {crop_h}x{crop_w}): top-1 equal on "
          f"{len(files) - mismatches}/{len(files)} images")
    return mismatches == 0


def sweep(tool, folder, tol, count):
    """Random sizes and resize targets (up and down, both pass orders), JPEGs with random chroma
    subsampling and quality; each compared on the whole resized image (crop = resized size)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1234)
    worst, bad = 0.0, 0
    for i in range(count):
        w, h = (int(v) for v in rng.integers(1, 700, 2))
        shorter = int(rng.integers(4, 400))
        if i % 2:
            name = f"sweep{i:02d}_{w}x{h}.jpg"
            Image.fromarray(scene(w, h, 100 + i)).save(
                os.path.join(folder, name), quality=int(rng.integers(50, 100)), subsampling=int(rng.integers(0, 3)))
        else:
            name = f"sweep{i:02d}_{w}x{h}.png"
            Image.fromarray(scene(w, h, 100 + i)).save(os.path.join(folder, name))
        path = os.path.join(folder, name)
        rw, rh = torchvision_resize(Image.new("L", (w, h)), shorter).size
        ours = rust_tensors(tool, [path], shorter, rh, rw, os.path.join(folder, "rust"))[path]
        diff = float(np.max(np.abs(ours - reference(path, shorter, rh, rw))))
        worst = max(worst, diff)
        if diff > tol:
            bad += 1
            print(f"  FAIL {name}: resize {shorter} -> {rw}x{rh}: max abs {diff:.3g}")
    print(f"sweep: {count} random images (sizes 1-699, shorter side 4-399, PNG and JPEG): worst {worst:.3g}, "
          f"{bad} over tolerance")
    return bad == 0


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(root, "target", "preprocess-parity"), help="output folder")
    parser.add_argument("--preprocess", default=os.path.join(root, "target", "debug", "examples", "preprocess"),
                        help="the gm-runtime `preprocess` example binary")
    parser.add_argument("--gm-run", default=os.path.join(root, "target", "debug", "gm-run"), help="gm-run binary")
    parser.add_argument("--model", action="append", default=[], help="exported model for the top-1 check")
    parser.add_argument("--tol", type=float, default=1e-2, help="max abs difference allowed (normalised tensors)")
    parser.add_argument("--sweep", type=int, default=40, help="random-size images for the resampling sweep")
    args = parser.parse_args()

    for tool in [args.preprocess] + ([args.gm_run] if args.model else []):
        if not os.path.isfile(tool):
            print(f"error: {tool} not found (cargo build -p gm-runtime --bin gm-run --example preprocess)",
                  file=sys.stderr)
            return 2
    files = make_images(os.path.join(args.work, "images"))
    ok = True
    for resize, (crop_h, crop_w) in [(256, (224, 224)), (73, (64, 64)), (82, (72, 100))]:
        label = f"resize {resize}, crop {crop_h}x{crop_w}"
        ours = rust_tensors(args.preprocess, files, resize, crop_h, crop_w,
                            os.path.join(args.work, f"rust-{resize}-{crop_h}x{crop_w}"))
        print(f"{label}: max abs difference of the normalised tensors (gm-run vs PIL + torchvision)")
        worst = 0.0
        for f in files:
            ref = reference(f, resize, crop_h, crop_w)
            got = ours[f]
            if got.shape != ref.shape:
                print(f"  FAIL {os.path.basename(f):28s} shape {got.shape} vs reference {ref.shape}")
                ok = False
                continue
            diff = float(np.max(np.abs(got - ref)))
            levels = int(np.sum(np.abs(got - ref) > 1e-6))
            worst = max(worst, diff)
            good = diff <= args.tol
            ok &= good
            note = "  (reference: high byte, see --help)" if os.path.basename(f) == HIGH_BYTE_REFERENCE else ""
            with Image.open(f) as im:
                desc = f"{im.format} {im.mode} {im.size[0]}x{im.size[1]}"
            print(f"  {'ok  ' if good else 'FAIL'} {os.path.basename(f):28s} {desc:22s} max abs {diff:.3g}"
                  f"  ({levels} values differ){note}")
        print(f"  worst {worst:.3g} (tolerance {args.tol})")
    ok &= sweep(args.preprocess, os.path.join(args.work, "sweep"), args.tol, args.sweep)
    for model in args.model:
        ok &= check_model(model, files, args.gm_run, os.path.join(args.work, "model-" + os.path.basename(model)))
    print("preprocessing parity: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
