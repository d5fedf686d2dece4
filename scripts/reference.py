#!/usr/bin/env python3
"""Reference tensors from the official GroupMamba implementation, for `gm-validate`.

Runs the official PyTorch model (your checkout of github.com/Amshaker/GroupMamba, imported from
`classification/models/`) on one input batch and saves the logits and every intermediate tensor
that `gm-export --debug-outputs` exposes, under the same names, in one `.npz`:

    stem, block{S}.{J}, block{S}.{J}.attn, block{S}.{J}.mlp, block{S}.{J}.attn.mamba_g{1..4},
    stage1..4, post_network.0.attn.mamba_g{1..4}, cls_block, features, logits_head, logits_dist,
    logits, and `input` (the batch the model ran on).

All arrays are float32, C order. The `.npz` also holds `manifest.json`: the command line, the
upstream files' sha256 (and git commit when the checkout is a git repository), the weights (file
and sha256, or the seed), the input (source, shape, sha256), device, scan implementation, Python /
torch / numpy / timm / einops versions, and per tensor its shape, dtype and the sha256 of its bytes.
`numpy.load(path)[name]` reads an array; `unzip -p path manifest.json` the manifest.

The selective scan. Upstream calls the CUDA extension `selective_scan_cuda_core` (CUDA only). On
CPU, and on CUDA when that extension is not built, this script installs, *before* importing the
model, a module of that name whose `fwd` computes the same recurrence in pure PyTorch:

    Δ_t = softplus(delta_t + delta_bias)   (threshold 20, as the kernel and F.softplus)
    h_t = exp(Δ_t·A)·h_{t−1} + Δ_t·B_t·u_t,  h_{−1} = 0
    y_t = Σ_n C_t·h_t + D·u_t

exactly (no approximation), in float64, in chunks of 64 steps: inside a chunk, the closed form
h_t = Σ_{k≤t} exp(S_t − S_k)·b_k + exp(S_t)·h_in with S the in-chunk cumulative sum of Δ·A (all
exponents ≤ 0, so nothing overflows); the state is carried from chunk to chunk. The result is
cast back to the input dtype. `--scan official` insists on the CUDA extension, `--scan pure` on
this implementation; `auto` (default) uses the extension when on CUDA and importable.

Weights: `--checkpoint` (an official `.pth` — flat or nested state_dict, `module.` prefixes — or a
`.safetensors`), loaded strictly; or `--seed N`: the official random init after
`torch.manual_seed(N)`, optionally `--perturb`ed (norm, bias, BatchNorm statistics, Ds, skip_scale,
A_logs and in_proj scale randomised, so that every part of the network, the scan included, moves
the outputs; the raw init leaves the scan's recurrent part at ~1e-4 of the output). With random
weights, `--save-checkpoint W.pth` writes them (torch.save of the state_dict) for `gm-export
--checkpoint W.pth`.

Input: `--image FILE…` (the official evaluation transform: RGB, resize the shorter side to
int(256/224·size) with PIL bicubic, center crop, /255, ImageNet mean/std; square sizes only),
`--input-npy X.npy` ([N, 3, H, W] float32, already normalised), or `--random-seed N`
(`torch.randn` from a generator seeded with N, as the shared fixtures were made). Size:
`--size 224` or `--size 72x100` (H×W).

Example (CPU, the tiny checkpoint, one image):

    python3 scripts/reference.py --repo ~/GroupMamba --variant tiny \\
        --checkpoint groupmamba_tiny_ema.pth --image cat.jpg --out tiny_ref.npz

Needs: torch, numpy, einops, timm (upstream pins 0.4.12), Pillow for --image.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
import types
import zipfile

import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CHUNK = 64
VARIANTS = {
    "tiny": dict(stem_hidden_dim=32, embed_dims=[64, 128, 348, 448], depths=[3, 4, 9, 3]),
    "small": dict(stem_hidden_dim=64, embed_dims=[64, 128, 348, 512], depths=[3, 4, 16, 3]),
    "base": dict(stem_hidden_dim=64, embed_dims=[96, 192, 424, 512], depths=[3, 6, 21, 3]),
}


def fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"reference.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_size(text: str) -> tuple[int, int]:
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            size = (int(h), int(w))
        else:
            size = (int(text), int(text))
    except ValueError:
        fail(f"--size {text}: expected N or HxW, e.g. 224 or 72x100")
    if min(size) < 1 or max(size) > 8192:
        fail(f"--size {text}: sides must be between 1 and 8192")
    return size


# ---- the pure-PyTorch selective scan ---------------------------------------------------------


def pure_selective_scan(torch, u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
                        compute_dtype=None):
    """y for u, delta (b, d, l); A (d, n); B, C (b, g, n, l) with g | d; D, delta_bias (d,).
    Computed in `compute_dtype` (default float64: a reference; benchmarks pass float32)."""
    F = torch.nn.functional
    out_dtype = u.dtype
    f64 = compute_dtype or torch.float64
    b, d, length = u.shape
    n = A.shape[1]
    g = B.shape[1]
    if d % g:
        raise ValueError(f"selective scan: {d} channels do not split into {g} groups")
    u = u.to(f64)
    delta = delta.to(f64)
    if delta_bias is not None:
        delta = delta + delta_bias.to(f64).view(1, d, 1)
    if delta_softplus:
        delta = F.softplus(delta)  # beta 1, threshold 20: the kernel's rule
    A = A.to(f64)
    # (b, g, n, l) → (b, d, n, l): channel c reads group c // (d / g).
    Bx = B.to(f64).repeat_interleave(d // g, dim=1)
    Cx = C.to(f64).repeat_interleave(d // g, dim=1)
    dA = delta.unsqueeze(2) * A.view(1, d, n, 1)  # (b, d, n, l), ≤ 0
    bx = (delta * u).unsqueeze(2) * Bx  # (b, d, n, l)
    h = torch.zeros(b, d, n, dtype=f64, device=u.device)
    ys = []
    for start in range(0, length, CHUNK):
        stop = min(start + CHUNK, length)
        t = stop - start
        s = torch.cumsum(dA[..., start:stop], dim=-1)  # (b, d, n, t)
        # decay[t, k] = exp(S_t − S_k) for k ≤ t, else 0.
        diff = s.unsqueeze(-1) - s.unsqueeze(-2)  # (b, d, n, t, t)
        mask = torch.ones(t, t, dtype=torch.bool, device=u.device).tril()
        decay = torch.where(mask, diff, torch.full_like(diff, -math.inf)).exp()
        hs = (decay @ bx[..., start:stop].unsqueeze(-1)).squeeze(-1)  # (b, d, n, t)
        hs = hs + s.exp() * h.unsqueeze(-1)
        h = hs[..., -1]
        ys.append((hs * Cx[..., start:stop]).sum(dim=2))  # (b, d, t)
    y = torch.cat(ys, dim=-1)
    if D is not None:
        y = y + D.to(f64).view(1, d, 1) * u
    return y.to(out_dtype)


def install_pure_scan(torch, compute_dtype=None) -> None:
    """Registers a `selective_scan_cuda_core` module whose fwd is the pure scan."""
    module = types.ModuleType("selective_scan_cuda_core")

    def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, nrows):
        y = pure_selective_scan(torch, u, delta, A, B, C, D, delta_bias, bool(delta_softplus), compute_dtype)
        # The kernel also returns per-chunk states for its backward; the eval forward ignores them.
        return y, u.new_empty(0)

    def bwd(*args, **kwargs):
        raise RuntimeError("reference.py: the pure scan has no backward (inference only)")

    module.fwd = fwd
    module.bwd = bwd
    module.__reference_pure__ = True
    sys.modules["selective_scan_cuda_core"] = module


def install_timm_shim(torch) -> None:
    """The four timm names the model file uses, when timm is not installed (noted in the manifest).

    DropPath is never instantiated at drop_path_rate 0 (the blocks use nn.Identity); trunc_normal_
    is torch's, the same algorithm timm's is; register_model and _cfg only record metadata."""
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    vit = types.ModuleType("timm.models.vision_transformer")

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if self.drop_prob and self.training:
                raise RuntimeError("timm shim: DropPath is for inference only")
            return x

    layers.DropPath = DropPath
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    registry.register_model = lambda fn: fn
    vit._cfg = lambda **kwargs: dict(kwargs)
    timm.models = models
    models.layers, models.registry, models.vision_transformer = layers, registry, vit
    timm.__version__ = "shim (timm not installed)"
    for name, mod in [
        ("timm", timm),
        ("timm.models", models),
        ("timm.models.layers", layers),
        ("timm.models.registry", registry),
        ("timm.models.vision_transformer", vit),
    ]:
        sys.modules[name] = mod


def import_official(repo: str, torch):
    """Imports classification/models of the checkout as a package; returns its groupmamba module."""
    folder = os.path.join(repo, "classification", "models")
    if not os.path.isfile(os.path.join(folder, "groupmamba.py")):
        fail(f"--repo {repo}: {folder}/groupmamba.py not found (expected a checkout of "
             "github.com/Amshaker/GroupMamba)")
    name = "gm_official_models"
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.groupmamba")


def upstream_provenance(repo: str) -> dict:
    folder = os.path.join(repo, "classification", "models")
    files = {}
    for f in ("groupmamba.py", "ss2d.py", "csms6s.py"):
        p = os.path.join(folder, f)
        if os.path.isfile(p):
            files[f"classification/models/{f}"] = sha256_file(p)
    commit = None
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        top = subprocess.run(["git", "-C", repo, "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(repo):
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"path": os.path.abspath(repo), "git_commit": commit, "files_sha256": files}


# ---- weights ---------------------------------------------------------------------------------


def load_state_dict(torch, path: str) -> dict:
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            fail(f"--checkpoint {path}: reading .safetensors needs `pip install safetensors`")
        sd = load_file(path)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - report any loader failure with the file name
            fail(f"--checkpoint {path}: cannot load: {e}")
    for key in ("model_ema", "model", "state_dict", "ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        fail(f"--checkpoint {path}: not a state_dict (found {type(sd).__name__})")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def perturb(torch, model, seed: int) -> None:
    """Moves every part of the network off its init (see the module doc); seeded."""
    g = torch.Generator().manual_seed(seed)

    def rand_like(t, scale=1.0):
        return torch.randn(t.shape, generator=g, dtype=t.dtype) * scale

    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and leaf == "weight":
                p.copy_(1.0 + rand_like(p, 0.2))
            elif leaf == "bias" and "dt_projs" not in name:
                p.copy_(rand_like(p, 0.1))
            elif leaf == "Ds":
                p.copy_(1.0 + rand_like(p, 0.3))
            elif leaf == "skip_scale":
                p.copy_(1.0 + rand_like(p, 0.2))
            elif leaf == "A_logs":
                p.copy_(rand_like(p, 0.5))
            elif name.endswith("in_proj.weight"):
                p.copy_(rand_like(p, 1.0 / math.sqrt(p.shape[1])))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(rand_like(b, 0.1))
            elif name.endswith("running_var"):
                b.copy_(1.0 + torch.rand(b.shape, generator=g) * 0.5)


# ---- input -----------------------------------------------------------------------------------


def eval_transform(path: str, size: int) -> np.ndarray:
    """The official evaluation transform (torchvision Resize(int(256/224·size)) on a PIL image,
    CenterCrop(size), ToTensor, Normalize), written with PIL and numpy: (3, size, size) float32."""
    try:
        from PIL import Image
    except ImportError:
        fail("--image needs Pillow (`pip install pillow`)")
    try:
        img = Image.open(path)
        img = img.convert("RGB")
    except Exception as e:  # noqa: BLE001
        fail(f"--image {path}: cannot read: {e}")
    short_target = int((256 / 224) * size)
    w, h = img.size
    if w <= h:
        new_w, new_h = short_target, int(short_target * h / w)
    else:
        new_w, new_h = int(short_target * w / h), short_target
    img = img.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0  # (size, size, 3)
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def make_input(torch, args, size: tuple[int, int]):
    h, w = size
    if args.image:
        if h != w:
            fail(f"--image with --size {h}x{w}: the official transform crops a square; give --size N")
        batch = np.stack([eval_transform(p, h) for p in args.image])
        info = {"source": "images", "files": [
            {"path": p, "sha256": sha256_file(p)} for p in args.image],
            "transform": f"RGB; resize shorter side to {int((256 / 224) * h)} (PIL bicubic); "
                         f"center crop {h}; /255; normalize mean {MEAN} std {STD}"}
    elif args.input_npy:
        try:
            batch = np.load(args.input_npy, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            fail(f"--input-npy {args.input_npy}: cannot read: {e}")
        if batch.dtype != np.float32:
            fail(f"--input-npy {args.input_npy}: dtype {batch.dtype}; expected float32")
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (h, w):
            fail(f"--input-npy {args.input_npy}: shape {list(batch.shape)}; expected "
                 f"[N, 3, {h}, {w}] (or pass the matching --size)")
        info = {"source": "npy", "path": args.input_npy, "sha256": sha256_file(args.input_npy)}
    else:
        gen = torch.Generator().manual_seed(args.random_seed)
        batch = torch.randn((args.batch, 3, h, w), generator=gen).numpy()
        info = {"source": "random", "seed": args.random_seed,
                "generator": "torch.randn(shape, generator=torch.Generator().manual_seed(seed))"}
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    info["shape"] = list(batch.shape)
    return batch, info


# ---- capture ---------------------------------------------------------------------------------


def attach_hooks(model, captured: dict, order: list):
    """Forward hooks that store every tensor gm-export's --debug-outputs names."""
    hw = {}

    def put(name, tensor):
        captured[name] = tensor.detach().float().cpu().numpy().copy()
        if name not in order:
            order.append(name)

    def on(module, fn):
        module.register_forward_hook(lambda m, i, o: fn(o))

    stages = model.num_stages

    def remember_hw(stage):
        def fn(out):
            _, h, w = out
            hw[stage] = (h, w)
        return fn

    for s in range(1, stages + 1):
        on(getattr(model, f"patch_embed{s}"), remember_hw(s))
    on(model.patch_embed1, lambda o: put("stem", o[0]))

    def tokens_to_map(stage, x):
        h, w = hw[stage]
        b, _, c = x.shape
        return x.reshape(b, h, w, c).permute(0, 3, 1, 2)

    for s in range(1, stages + 1):
        blocks = getattr(model, f"block{s}")
        for j, blk in enumerate(blocks):
            name = f"block{s}.{j}"
            for k in range(1, 5):
                on(getattr(blk.attn, f"mamba_g{k}"),
                   lambda o, n=f"{name}.attn.mamba_g{k}": put(n, o))
            on(blk.attn, lambda o, n=f"{name}.attn": put(n, o))
            on(blk.mlp, lambda o, n=f"{name}.mlp": put(n, o))
            on(blk, lambda o, n=name: put(n, o))
        if s < stages:
            on(getattr(model, f"norm{s}"),
               lambda o, s=s: put(f"stage{s}", tokens_to_map(s, o)))
        else:
            last = blocks[len(blocks) - 1]
            on(last, lambda o, s=s: put(f"stage{s}", tokens_to_map(s, o)))
    cls = model.post_network[0]
    for k in range(1, 5):
        on(getattr(cls.attn, f"mamba_g{k}"),
           lambda o, n=f"post_network.0.attn.mamba_g{k}": put(n, o))
    on(cls, lambda o: put("cls_block", o[:, 0]))
    on(getattr(model, f"norm{stages}"), lambda o: put("features", o))
    on(model.head, lambda o: put("logits_head", o))
    if getattr(model, "dist", False):
        on(model.dist_head, lambda o: put("logits_dist", o))


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Reference tensors from the official GroupMamba model, for gm-validate.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[0])
    p.add_argument("--repo", required=True, help="checkout of github.com/Amshaker/GroupMamba")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--variant", choices=sorted(VARIANTS))
    model.add_argument("--config", help="JSON: stem_hidden_dim, embed_dims, depths, mlp_ratios, "
                       "num_classes (as gm-export --config)")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="official .pth (or .safetensors)")
    weights.add_argument("--seed", type=int, help="official random init after torch.manual_seed")
    p.add_argument("--perturb", action="store_true", help="with --seed: randomise norms, biases, "
                   "BN statistics, Ds, skip_scale, A_logs, in_proj scale (seed + 1)")
    p.add_argument("--save-checkpoint", help="with --seed: torch.save the state_dict here")
    inp = p.add_mutually_exclusive_group()
    inp.add_argument("--image", nargs="+", help="image files (official eval transform)")
    inp.add_argument("--input-npy", help="[N, 3, H, W] float32 .npy, already normalised")
    inp.add_argument("--random-seed", type=int, default=0,
                     help="seeded torch.randn input (default, seed 0)")
    p.add_argument("--batch", type=int, default=1, help="batch of the random input")
    p.add_argument("--size", default="224", help="input size: N or HxW (default 224)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--scan", choices=["auto", "official", "pure"], default="auto",
                   help="selective scan: the CUDA extension, the pure-PyTorch one, or auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", required=True, help="output .npz")
    args = p.parse_args(argv)
    if args.perturb and args.seed is None:
        p.error("--perturb needs --seed (a checkpoint's weights are used as they are)")
    if args.save_checkpoint and args.seed is None:
        p.error("--save-checkpoint needs --seed")
    if args.batch < 1:
        p.error("--batch must be at least 1")
    if not args.out.endswith(".npz"):
        p.error("--out must end with .npz")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        fail(f"--out {args.out}: the folder {out_dir} does not exist")
    size = parse_size(args.size)
    try:
        import torch
    except ImportError:
        fail("PyTorch is not installed (`pip install torch`)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {args.device}: CUDA is not available to this torch")
    # A reference is FP32: no TF32 in cuDNN convolutions (on by default in torch) or matmuls.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    # The scan module must be in place before the model code imports it.
    scan_desc = None
    if args.scan in ("auto", "official") and device.type == "cuda":
        try:
            import selective_scan_cuda_core  # noqa: F401
            scan_desc = "official CUDA extension selective_scan_cuda_core"
        except ImportError as e:
            if args.scan == "official":
                fail(f"--scan official: cannot import selective_scan_cuda_core: {e}")
    elif args.scan == "official":
        fail("--scan official needs --device cuda (the extension is CUDA only)")
    if scan_desc is None:
        install_pure_scan(torch)
        scan_desc = f"pure PyTorch, exact recurrence in float64, chunks of {CHUNK}"

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}
    try:
        import timm
        versions["timm"] = timm.__version__
    except ImportError:
        install_timm_shim(torch)
        versions["timm"] = "shim: timm not installed (DropPath, trunc_normal_, register_model, _cfg)"
        print("reference.py: timm is not installed: using a shim for the four names the model "
              "file imports (see install_timm_shim)", file=sys.stderr)
    try:
        import einops
        versions["einops"] = einops.__version__
    except ImportError:
        fail("the official model needs einops (`pip install einops`)")

    gm = import_official(args.repo, torch)
    from functools import partial
    nn = torch.nn
    if args.variant:
        cfg = dict(VARIANTS[args.variant], mlp_ratios=[8, 8, 4, 4], num_classes=1000)
        name = args.variant
    else:
        with open(args.config) as f:
            cfg = json.load(f)
        cfg = cfg.get("model", cfg)  # the shared fixtures' config.json nests it
        name = "custom"
    kwargs = dict(stem_hidden_dim=cfg["stem_hidden_dim"], embed_dims=list(cfg["embed_dims"]),
                  mlp_ratios=list(cfg["mlp_ratios"]), depths=list(cfg["depths"]),
                  num_classes=cfg.get("num_classes", 1000),
                  distillation=cfg.get("distillation", True), drop_path_rate=0.0,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))

    started = time.time()
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = gm.GroupMamba(**kwargs)
    weights = {}
    if args.checkpoint:
        sd = load_state_dict(torch, args.checkpoint)
        result = model.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            fail(f"--checkpoint {args.checkpoint} does not fit the {name} model: "
                 f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
                 f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})")
        weights = {"source": os.path.basename(args.checkpoint),
                   "sha256": sha256_file(args.checkpoint)}
    else:
        weights = {"source": f"random (official init, torch.manual_seed({args.seed}))",
                   "seed": args.seed, "perturbed": bool(args.perturb)}
        if args.perturb:
            perturb(torch, model, args.seed + 1)
            weights["perturb_seed"] = args.seed + 1
        if args.save_checkpoint:
            torch.save(model.state_dict(), args.save_checkpoint)
            weights["saved_to"] = os.path.basename(args.save_checkpoint)
            weights["sha256"] = sha256_file(args.save_checkpoint)
    model = model.to(device).eval()
    build_s = time.time() - started

    batch, input_info = make_input(torch, args, size)
    captured, order = {}, []
    attach_hooks(model, captured, order)
    started = time.time()
    with torch.no_grad():
        logits = model(torch.from_numpy(batch).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    forward_s = time.time() - started
    captured["logits"] = logits.detach().float().cpu().numpy()
    order.append("logits")
    arrays = {"input": batch}
    arrays.update((n, np.ascontiguousarray(captured[n], dtype=np.float32)) for n in order)
    bad = [n for n, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        print(f"reference.py: warning: non-finite values in {', '.join(bad)}", file=sys.stderr)

    manifest = {
        "generator": "scripts/reference.py",
        "format": 1,
        "command": [os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:]),
        "upstream": upstream_provenance(args.repo),
        "model": name,
        "config": {k: v for k, v in kwargs.items() if k != "norm_layer"},
        "weights": weights,
        "input": dict(input_info, sha256_array=sha256_bytes(batch.tobytes())),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})"
                                 if device.type == "cuda" else ""),
        "scan": scan_desc,
        "precision": "fp32 (TF32 off)",
        "versions": versions,
        "threads": torch.get_num_threads(),
        "timings_s": {"build": round(build_s, 3), "forward": round(forward_s, 3)},
        "order": ["input"] + order,
        "tensors": {n: {"shape": list(a.shape), "dtype": "float32",
                        "sha256": sha256_bytes(a.tobytes())} for n, a in arrays.items()},
        "sha256_note": "of each array's float32 C-order bytes",
    }
    # One zip: NAME.npy members (numpy.savez, stored) plus manifest.json; written to a temporary
    # file first so that a failure leaves no half-written .npz behind.
    tmp = args.out + ".tmp"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    with zipfile.ZipFile(tmp, "a") as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
    os.replace(tmp, args.out)
    top = arrays["logits"].argmax(-1).tolist()
    print(f"reference.py: {name} on {manifest['device']}, scan: {scan_desc}; "
          f"{len(arrays) - 1} tensors + input {list(batch.shape)}; top-1 {top}; "
          f"forward {forward_s:.2f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
