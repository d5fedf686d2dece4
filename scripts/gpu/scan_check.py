#!/usr/bin/env python3
"""CUDA SelectiveScan kernel on a GPU machine: correctness against the Rust CPU reference, and a
bandwidth benchmark on GroupMamba-Tiny's stage shapes. Writes one JSON report.

  python3 scripts/gpu/scan_check.py --lib build/libgm_scan_cuda.so --reference BIN --out report.json
  python3 scripts/gpu/scan_check.py --lib ... --quick   # small cases only (for compute-sanitizer)

Correctness: every dtype (f32, f16, bf16 inputs; state always f32), every direction, odd channel counts
(87, 106), odd H×W, L = 1, G = 1 and G = 4 nodes, and the shared fixtures' recorded official scan calls.
Reference: the Rust CPU kernel (runtime/examples/scan_reference.rs) run on the same inputs (for f16/bf16:
on the inputs as rounded to that type). Metrics: max abs error and normwise relative error (max abs error / max abs reference).
"""
import argparse
import ctypes
import json
import os
import subprocess
import tempfile

import numpy as np
import torch

DTYPES = {"f32": (0, torch.float32), "f16": (1, torch.float16), "bf16": (2, torch.bfloat16)}


def load_lib(path):
    lib = ctypes.CDLL(path)
    f = lib.gm_selective_scan_cuda
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 5 + [
        ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p]
    return f


def launch(fn, dtype, t, directions):
    n, c, h, w = t["u"].shape
    g = t["B"].shape[1]
    y = torch.empty_like(t["u"])
    dirs = (ctypes.c_int64 * g)(*directions)
    stream = torch.cuda.current_stream().cuda_stream
    rc = fn(DTYPES[dtype][0], t["u"].data_ptr(), t["delta"].data_ptr(), t["A"].data_ptr(), t["B"].data_ptr(),
            t["C"].data_ptr(), t["D"].data_ptr(), t["delta_bias"].data_ptr(), y.data_ptr(), n, c, g, h, w, dirs,
            ctypes.c_void_p(stream))
    assert rc == 0, f"kernel launch failed: cudaError {rc}"
    return y


def random_case(rng, n, c, g, h, w):
    return {
        "u": rng.standard_normal((n, c, h, w), dtype=np.float32),
        "delta": (rng.standard_normal((n, c, h, w), dtype=np.float32) * 0.5 - 1.0),
        "A": -np.exp(rng.standard_normal(c, dtype=np.float32) * 0.5),
        "B": rng.standard_normal((n, g, h, w), dtype=np.float32),
        "C": rng.standard_normal((n, g, h, w), dtype=np.float32),
        "D": rng.standard_normal(c, dtype=np.float32),
        "delta_bias": rng.standard_normal(c, dtype=np.float32) - 2.0,
    }


def cpu_reference(ref_bin, case, directions):
    with tempfile.TemporaryDirectory() as d:
        for k, v in case.items():
            np.save(os.path.join(d, f"{k}.npy"), np.ascontiguousarray(v, dtype=np.float32))
        np.save(os.path.join(d, "directions.npy"), np.array(directions, dtype=np.float32))
        subprocess.run([ref_bin, d], check=True)
        return np.load(os.path.join(d, "y_ref.npy"))


def compare(fn, ref_bin, case, directions, dtype):
    tdt = DTYPES[dtype][1]
    per_channel = ("A", "D", "delta_bias")
    dev = {k: torch.from_numpy(v).cuda().to(torch.float32 if k in per_channel else tdt) for k, v in case.items()}
    # The reference sees exactly the values the kernel sees (inputs rounded to the input type).
    rounded = {k: v.float().cpu().numpy() for k, v in dev.items()}
    ref = cpu_reference(ref_bin, rounded, directions)
    y = launch(fn, dtype, dev, directions).float().cpu().numpy()
    err = np.abs(y - ref)
    # Relative error normwise: max abs error over the largest reference magnitude.
    return float(err.max()), float(err.max() / max(np.abs(ref).max(), 1e-30))


def visiting_order(direction, h, w):
    idx = np.arange(h * w).reshape(h, w)
    order = idx.reshape(-1) if direction % 2 == 0 else idx.T.reshape(-1)
    return order[::-1] if direction >= 2 else order


def fixture_cases(root):
    """The recorded official scan calls (scan order, G = 1), laid out as the op takes them."""
    for case in sorted(os.listdir(root)):
        scan = os.path.join(root, case, "scan")
        if not os.path.isdir(scan):
            continue
        cfg = json.load(open(os.path.join(root, case, "config.json")))
        h1, w1 = cfg["stage_hw"]["stage1"]
        calls = sorted({f.split("_")[0] for f in os.listdir(scan)})
        for call in calls:
            k = int(call[4:])
            a = {n: np.load(os.path.join(scan, f"{call}_{n}.npy")) for n in
                 ("u", "delta", "A", "B", "C", "D", "delta_bias", "y")}
            length = a["u"].shape[-1]
            h, w = (h1, w1) if length == h1 * w1 else (1, 1)
            direction = k % 4
            order = visiting_order(direction, h, w)

            def to_map(x):  # (N, rows, L) in scan order → (N, rows, H, W) row-major
                out = np.empty_like(x)
                out[..., order] = x
                return out.reshape(x.shape[0], x.shape[1], h, w)
            yield f"{case}/{call}", {
                "u": to_map(a["u"]), "delta": to_map(a["delta"]), "A": a["A"].reshape(-1),
                "B": to_map(a["B"].reshape(a["B"].shape[0], 1, -1)), "C": to_map(a["C"].reshape(a["C"].shape[0], 1, -1)),
                "D": a["D"], "delta_bias": a["delta_bias"]}, to_map(a["y"]), direction


def bench(fn, dtype, n, c, h, w, iters=50, graph_launches=20):
    """Times one node call (G = 4, directions [0, 1, 2, 3]) three ways:
    - median_ms / tb_per_s: events around each single launch, synchronised every time (the v1
      metric; it includes the host's launch latency, which dominates for the small stages);
    - graph_ms / graph_tb_per_s: a CUDA graph of graph_launches launches on the same buffers,
      per launch (kernel time without launch gaps; inputs of the small stages stay in L2);
    - cold_ms / cold_tb_per_s: the same graph cycling through enough input/output sets (> 200 MB
      together, four times the L2) that each launch reads from device memory."""
    g = 4
    rng = np.random.default_rng(0)
    tdt = DTYPES[dtype][1]
    el = torch.tensor([], dtype=tdt).element_size()
    L = h * w
    nbytes = el * (3 * n * c * L + 2 * n * g * L)  # u, delta read; y written; B, C rows read
    sets = max(1, min(16, -(-200_000_000 // nbytes)))
    devs = []
    for k in range(sets):
        case = random_case(rng, n, c, g, h, w) if k == 0 else None
        if k == 0:
            dev = {key: torch.from_numpy(v).cuda().to(torch.float32 if key in ("A", "D", "delta_bias") else tdt)
                   for key, v in case.items()}
        else:  # cheap copies with other addresses
            dev = {key: v.clone() for key, v in devs[0].items()}
        devs.append(dev)
    dev = devs[0]
    for _ in range(5):
        launch(fn, dtype, dev, [0, 1, 2, 3])
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        launch(fn, dtype, dev, [0, 1, 2, 3])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = float(np.median(times))
    out = {"dtype": dtype, "shape": [n, c, h, w], "groups": g, "median_ms": ms,
           "bytes": nbytes, "tb_per_s": nbytes / (ms * 1e-3) / 1e12}

    def graph_time(pool):
        ys = [torch.empty_like(d["u"]) for d in pool]
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                for i in range(graph_launches):
                    d = pool[i % len(pool)]
                    launch_into(fn, dtype, d, [0, 1, 2, 3], ys[i % len(pool)])
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.cuda.synchronize()
        t = []
        for _ in range(10):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            t.append(start.elapsed_time(end) / graph_launches)
        return float(np.median(t))

    try:
        gms = graph_time(devs[:1])
        cms = graph_time(devs)
        out.update({"graph_ms": gms, "graph_tb_per_s": nbytes / (gms * 1e-3) / 1e12,
                    "cold_sets": sets, "cold_ms": cms, "cold_tb_per_s": nbytes / (cms * 1e-3) / 1e12})
    except Exception as e:  # graph capture unavailable: keep the single-launch metric
        out["graph_error"] = repr(e)
    return out


def launch_into(fn, dtype, t, directions, y):
    n, c, h, w = t["u"].shape
    g = t["B"].shape[1]
    dirs = (ctypes.c_int64 * g)(*directions)
    stream = torch.cuda.current_stream().cuda_stream
    rc = fn(DTYPES[dtype][0], t["u"].data_ptr(), t["delta"].data_ptr(), t["A"].data_ptr(), t["B"].data_ptr(),
            t["C"].data_ptr(), t["D"].data_ptr(), t["delta_bias"].data_ptr(), y.data_ptr(), n, c, g, h, w, dirs,
            ctypes.c_void_p(stream))
    assert rc == 0, f"kernel launch failed: cudaError {rc}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--reference", help="runtime/examples/scan_reference binary")
    ap.add_argument("--fixtures", default="shared-parity")
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true", help="small correctness cases only")
    ap.add_argument("--bench-only", action="store_true", help="skip the correctness cases (kernel variants)")
    args = ap.parse_args()
    fn = load_lib(args.lib)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": [], "fixtures": [],
              "bench": []}
    rng = np.random.default_rng(1234)
    shapes = [(2, 8, 1, 3, 5), (1, 4, 4, 1, 1), (2, 87, 1, 7, 9), (1, 348, 4, 5, 7), (3, 424, 4, 3, 4),
              (1, 16, 4, 1, 7), (1, 12, 4, 7, 1),
              (1, 8, 4, 28, 28)]  # a small plane that 14 and 28 divide: every segment length under the sanitizer
    if not args.quick:
        shapes += [(2, 64, 4, 56, 56), (4, 128, 4, 28, 28), (2, 106, 1, 19, 23), (1, 64, 4, 67, 45),
                   (3, 348, 4, 14, 14), (5, 448, 4, 7, 7)]
    if args.bench_only:
        shapes = []
    worst = {}
    for (n, c, g, h, w) in shapes:
        for dtype in DTYPES:
            for directions in ([[0], [1], [2], [3]] if g == 1 else [[0, 1, 2, 3], [3, 2, 1, 0]]):
                case = random_case(rng, n, c, g, h, w)
                abs_err, rel_err = compare(fn, args.reference, case, directions, dtype)
                report["cases"].append({"shape": [n, c, h, w], "groups": g, "directions": directions,
                                        "dtype": dtype, "max_abs": abs_err, "max_rel": rel_err})
                worst[dtype] = max(worst.get(dtype, 0.0), rel_err)
    report["worst_rel"] = worst
    print("worst max rel error per dtype:", worst)
    if os.path.isdir(args.fixtures) and not args.bench_only:
        for name, case, y, direction in fixture_cases(args.fixtures):
            dev = {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in case.items()}
            got = launch(fn, "f32", dev, [direction]).cpu().numpy()
            err = float(np.abs(got - y).max())
            report["fixtures"].append({"call": name, "direction": direction, "max_abs_vs_official": err})
        print("fixtures: max abs vs official", max(f["max_abs_vs_official"] for f in report["fixtures"]))
    if not args.quick:
        for dtype in ("f32", "f16"):
            for (c, hw) in ((64, 56), (128, 28), (348, 14), (448, 7)):
                r = bench(fn, dtype, 128, c, hw, hw)
                report["bench"].append(r)
                print(f"bench {dtype} 128x{c}x{hw}x{hw}: {r['median_ms']:.4f} ms, {r['tb_per_s']:.2f} TB/s;"
                      f" graph {r.get('graph_ms', float('nan')):.4f} ms, {r.get('graph_tb_per_s', float('nan')):.2f} TB/s;"
                      f" cold x{r.get('cold_sets', 0)} {r.get('cold_ms', float('nan')):.4f} ms,"
                      f" {r.get('cold_tb_per_s', float('nan')):.2f} TB/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    if args.bench_only:
        return 0
    ok = worst.get("f32", 1.0) <= 1e-5 and all(f["max_abs_vs_official"] <= 1e-5 for f in report["fixtures"])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
