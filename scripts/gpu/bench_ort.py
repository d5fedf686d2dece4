#!/usr/bin/env python3
"""Exported GroupMamba models on ONNX Runtime's CUDA execution provider, with our custom-op library
(`libgroupmamba_ops.so` built with `--features cuda`): parity, FP16 agreement, node placement, and
throughput/latency. One JSON report.

  python3 scripts/gpu/bench_ort.py --library libgroupmamba_ops.so \
      --fixture DIR ... --tiny-fp32 tiny.onnx --tiny-fp16 tiny-fp16.onnx --out ort-cuda.json

- fixtures (DIR holds input.npy, logits.npy of the official model, model-fp32.onnx, model-fp16.onnx):
  FP32 logits vs the official ones (max abs, tolerance 1e-4); FP16 vs FP32 (cosine, top-1);
- random: --random N inputs (randn, batches of --random-batch) through the tiny FP32 and FP16
  exports (random weights, same seed): cosine per image (min/mean) and top-1 agreement;
- placement: each model once with ORT's profiler; every node's provider is counted (SelectiveScan must
  be on CUDAExecutionProvider), and a session with `session.disable_cpu_ep_fallback=1` is tried;
- bench: tiny at each --batches size, FP32 (TF32 off) and FP16, I/O binding with the input and the
  output in GPU memory (bound once), warm-up excluded; every run is synchronous (ORT waits for the
  stream at the end of Run), timed with perf_counter: median, p99, img/s. Plus the same with ORT's
  CUDA graphs (`enable_cuda_graph`), where ORT accepts the model;
- profile (--profile): the GPU kernels of tiny FP16 (batch 128 and 1), through CUPTI (torch.profiler
  in the same process), top kernels and their share of GPU time.
--provider cpu runs the same on ORT's CPU provider (a dry run of the script without a GPU).
"""
import argparse
import json
import os
import sys
import time

try:  # torch first: it loads the CUDA 13 runtime, cuBLAS and cuDNN that the CUDA EP needs.
    import torch  # noqa: F401
except Exception:  # noqa: BLE001
    torch = None
import numpy as np
import onnxruntime as ort

SCAN_OP = "SelectiveScan"


def log(*a):
    print(*a, flush=True)


class Runner:
    def __init__(self, args):
        self.args = args
        self.cuda = args.provider == "cuda"
        self.device = "cuda" if self.cuda else "cpu"

    def options(self, profile_prefix=None, strict=False):
        so = ort.SessionOptions()
        if self.args.library:  # None: no custom-op library (e.g. a portable export)
            so.register_custom_ops_library(self.args.library)
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        if strict:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return so

    def providers(self, tf32=False, graph=False, strict=False):
        if not self.cuda:
            return ["CPUExecutionProvider"]
        opts = {"device_id": "0", "use_tf32": "1" if tf32 else "0"}
        opts.update(dict(kv.split("=", 1) for kv in (getattr(self.args, "ep_option", None) or [])))
        if graph:
            opts["enable_cuda_graph"] = "1"
        # strict: no CPU provider at all (ORT refuses disable_cpu_ep_fallback next to an explicit CPU EP)
        return [("CUDAExecutionProvider", opts)] + ([] if strict else ["CPUExecutionProvider"])

    def session(self, path, **kw):
        prof = kw.pop("profile_prefix", None)
        strict = kw.get("strict", False)
        s = ort.InferenceSession(path, self.options(prof, strict), providers=self.providers(**kw))
        if self.cuda and "CUDAExecutionProvider" not in s.get_providers():
            raise RuntimeError(f"{path}: CUDAExecutionProvider not active: {s.get_providers()}")
        return s


def run(sess, x):
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def cosine(a, b):
    a = a.astype(np.float64).reshape(a.shape[0], -1)
    b = b.astype(np.float64).reshape(b.shape[0], -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def placement(r, path, out_dir):
    """Profiles one run; counts nodes per provider; tries the no-CPU-fallback session option."""
    res = {}
    sess = r.session(path, profile_prefix=os.path.join(out_dir, "placement"))
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    run(sess, np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    os.remove(prof)
    per_provider, scan, elsewhere = {}, {}, {}
    for e in events:
        a = e.get("args", {})
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and "provider" in a:
            per_provider[a["provider"]] = per_provider.get(a["provider"], 0) + 1
            if a.get("op_name") == SCAN_OP:
                scan[a["provider"]] = scan.get(a["provider"], 0) + 1
            if a["provider"] != "CUDAExecutionProvider":
                elsewhere[a.get("op_name")] = elsewhere.get(a.get("op_name"), 0) + 1
    res["nodes_per_provider"] = per_provider
    res["selective_scan_nodes_per_provider"] = scan
    res["op_types_not_on_cuda"] = elsewhere
    if not r.cuda:
        return res
    try:
        r.session(path, strict=True)
        res["disable_cpu_ep_fallback"] = "session created: every node is on the CUDA EP"
    except Exception as e:  # noqa: BLE001
        res["disable_cpu_ep_fallback"] = f"refused: {str(e)[:400]}"
    return res


def fixtures(r, dirs):
    out = []
    for d in dirs:
        x = np.load(os.path.join(d, "input.npy"))
        ref = np.load(os.path.join(d, "logits.npy"))
        y32 = run(r.session(os.path.join(d, "model-fp32.onnx")), x)
        y16 = run(r.session(os.path.join(d, "model-fp16.onnx")), x)
        e = {
            "fixture": os.path.basename(d.rstrip("/")),
            "input_shape": list(x.shape),
            "fp32_vs_official_max_abs": float(np.abs(y32 - ref).max()),
            "fp32_within_1e-4": bool(np.abs(y32 - ref).max() <= 1e-4),
            "fp16_vs_fp32_cosine_min": float(cosine(y16, y32).min()),
            "fp16_vs_fp32_max_abs": float(np.abs(y16 - y32).max()),
            "fp16_top1_equals_fp32": bool((y16.argmax(1) == y32.argmax(1)).all()),
            "fp16_top1_equals_official": bool((y16.argmax(1) == ref.argmax(1)).all()),
            "fp16_vs_official_cosine_min": float(cosine(y16, ref).min()),
        }
        log("fixture", json.dumps(e))
        out.append(e)
    return out


def random_agreement(r, m32, m16, n, batch, size):
    s32, s16 = r.session(m32), r.session(m16)
    rng = np.random.default_rng(1234)
    cos, agree, total, maxabs, margin_flips = [], 0, 0, 0.0, []
    while total < n:
        b = min(batch, n - total)
        x = rng.standard_normal((b, 3, size, size), dtype=np.float32)
        y32, y16 = run(s32, x), run(s16, x)
        cos.append(cosine(y16, y32))
        same = y16.argmax(1) == y32.argmax(1)
        agree += int(same.sum())
        maxabs = max(maxabs, float(np.abs(y16 - y32).max()))
        for i in np.nonzero(~same)[0]:  # how close the FP32 top-2 were where top-1 differs
            top2 = np.sort(y32[i])[-2:]
            margin_flips.append(float(top2[1] - top2[0]))
        total += b
    cos = np.concatenate(cos)
    res = {"images": total, "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
           "top1_agreement": agree / total, "top1_disagreements": total - agree, "max_abs": maxabs,
           "fp32_top2_margin_at_disagreements": margin_flips[:20]}
    log("random", json.dumps(res))
    return res


def bench_one(r, sess, batch, iters, warmup, size):
    name_in, name_out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    x = np.random.default_rng(batch).standard_normal((batch, 3, size, size), dtype=np.float32)
    xv = ort.OrtValue.ortvalue_from_numpy(x, r.device, 0)
    yv = ort.OrtValue.ortvalue_from_shape_and_type([batch, 1000], np.float32, r.device, 0)
    io = sess.io_binding()
    io.bind_ortvalue_input(name_in, xv)
    io.bind_ortvalue_output(name_out, yv)
    for _ in range(warmup):
        sess.run_with_iobinding(io)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run_with_iobinding(io)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    med = times[len(times) // 2]
    return {"batch": batch, "iters": iters, "median_ms": med,
            "p99_ms": times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))],
            "min_ms": times[0], "img_per_s": batch / med * 1e3}


def bench_cuda_graph(r, path, batch, size, scale=1.0, tf32=False):
    """`bench_one` in a fresh session with ORT's CUDA graphs (captured on a session's first run, so
    one session per input shape); on failure {"batch", "error"} instead."""
    try:
        sess = r.session(path, tf32=tf32, graph=True)
        return bench_one(r, sess, batch, iters_for(batch, scale), 5, size)
    except Exception as ex:  # noqa: BLE001
        return {"batch": batch, "error": str(ex)[:400]}


def iters_for(batch, scale):
    return max(10, int({1: 300, 8: 100, 32: 50, 128: 30}.get(batch, 30) * scale))


def bench(r, models, size, scale):
    out = []
    for label, path, tf32, batches, graphs in models:
        try:
            sess = r.session(path, tf32=tf32)
        except Exception as e:  # noqa: BLE001
            out.append({"model": label, "error": str(e)[:400]})
            continue
        for b in batches:
            e = {"model": label, "cuda_graph": False, **bench_one(r, sess, b, iters_for(b, scale), 10, size)}
            log("bench", json.dumps(e))
            out.append(e)
        del sess
        if not (r.cuda and graphs):
            continue
        for b in batches:
            e = {"model": label, "cuda_graph": True, **bench_cuda_graph(r, path, b, size, scale, tf32)}
            log("bench", json.dumps(e))
            out.append(e)
            if "error" in e:
                break
    return out


def profile(r, path, batches, size):
    """GPU kernels of a few runs through CUPTI (torch.profiler sees every kernel of the process)."""
    if torch is None or not r.cuda:
        return {"error": "needs torch (CUPTI) and the CUDA provider"}
    from torch.profiler import ProfilerActivity, profile as tprof
    sess = r.session(path)
    res = {}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, size, size), dtype=np.float32)
        xv = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        io = sess.io_binding()
        io.bind_ortvalue_input(sess.get_inputs()[0].name, xv)
        io.bind_output(sess.get_outputs()[0].name, "cuda")
        for _ in range(5):
            sess.run_with_iobinding(io)
        runs = 5
        with tprof(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(runs):
                sess.run_with_iobinding(io)
        kernels = {}
        for ev in p.key_averages():
            t = getattr(ev, "self_device_time_total", None)
            if t is None:
                t = getattr(ev, "self_cuda_time_total", 0)
            if t and t > 0:  # µs of GPU time: kernels and copies
                k = kernels.setdefault(ev.key, [0.0, 0])
                k[0] += t
                k[1] += ev.count
        total = sum(v[0] for v in kernels.values())
        top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:30]
        res[f"batch{b}"] = {
            "gpu_time_per_run_ms": total / runs / 1e3,
            "kernels_per_run": sum(v[1] for v in kernels.values()) / runs,
            "top": [{"kernel": k[:140], "share": v[0] / total, "ms_per_run": v[0] / runs / 1e3,
                     "calls_per_run": v[1] / runs} for k, v in top],
        }
        log(f"profile batch {b}:", json.dumps(res[f"batch{b}"])[:3000])
    # ORT's own profiler (per node; for CUDA nodes its times are host-side unless the EP waits)
    try:
        psess = r.session(path, profile_prefix=os.path.join(out_dir_of(r), "ortprof"))
        b = batches[0]
        x = np.random.default_rng(0).standard_normal((b, 3, size, size), dtype=np.float32)
        for _ in range(4):
            run(psess, x)
        prof = psess.end_profiling()
        with open(prof) as f:
            events = json.load(f)
        os.remove(prof)
        per_op = {}
        for e in events:
            a = e.get("args", {})
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                k = f"{a.get('op_name')}@{a.get('provider')}"
                per_op[k] = per_op.get(k, 0) + e.get("dur", 0)
        total = sum(per_op.values()) or 1
        res["ort_profiler_batch%d_by_op" % b] = [{"op": k, "share": v / total, "us_total_4_runs": v}
                                                 for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])[:12]]
    except Exception as e:  # noqa: BLE001
        res["ort_profiler_error"] = str(e)[:400]
    return res


def out_dir_of(r):
    return os.path.dirname(os.path.abspath(r.args.out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--fixture", action="append", default=[])
    ap.add_argument("--tiny-fp32")
    ap.add_argument("--tiny-fp16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--random", type=int, default=1000)
    ap.add_argument("--random-batch", type=int, default=125)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--iters-scale", type=float, default=1.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ep-option", action="append", metavar="KEY=VALUE",
                    help="extra CUDA execution provider option (e.g. prefer_nhwc=1); repeatable")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    r = Runner(args)
    batches = [int(b) for b in args.batches.split(",")]
    report = {"onnxruntime": ort.__version__, "provider": args.provider, "ep_options": args.ep_option,
              "available_providers": ort.get_available_providers(), "library": args.library,
              "device": torch.cuda.get_device_name() if (torch is not None and r.cuda) else None,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save():
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    steps = [("placement", lambda: {os.path.basename(p): placement(r, p, out_dir)
                                    for p in [args.tiny_fp16, args.tiny_fp32] if p}),
             ("fixtures", lambda: fixtures(r, args.fixture)),
             ("random_fp16_vs_fp32", lambda: random_agreement(r, args.tiny_fp32, args.tiny_fp16, args.random,
                                                              args.random_batch, args.size)
              if args.tiny_fp32 and args.tiny_fp16 and args.random else None),
             ("bench", lambda: bench(r, [("tiny-fp16", args.tiny_fp16, False, batches, True),
                                         ("tiny-fp32", args.tiny_fp32, False, batches, True),
                                         ("tiny-fp32-tf32", args.tiny_fp32, True, [batches[0], batches[-1]], False)],
                                     args.size, args.iters_scale)),
             ("profile", lambda: profile(r, args.tiny_fp16, [128, 1], args.size) if args.profile else None)]
    for name, fn in steps:
        t = time.time()
        try:
            report[name] = fn()
        except Exception as e:  # noqa: BLE001
            report[name] = {"error": f"{type(e).__name__}: {str(e)[:1000]}"}
            log(f"{name} failed: {e}")
        report.setdefault("step_seconds", {})[name] = round(time.time() - t, 1)
        save()
    if r.cuda and isinstance(report.get("bench"), list):
        rows = [b for b in report["bench"] if "error" not in b]
        for b in rows:
            log(f"{b['model']:>15} graph={b['cuda_graph']!s:5} batch {b['batch']:>3}: median {b['median_ms']:.3f} ms "
                f"p99 {b['p99_ms']:.3f} ms {b['img_per_s']:.0f} img/s")
    save()


if __name__ == "__main__":
    sys.exit(main())
