#!/usr/bin/env python
"""Per-layer benchmark of the int8 kernels on ResNet-18's conv shapes (batch 1, 224x224);
--model mobilenet_v2 for MobileNetV2's (1x1 / depthwise) shapes.
--amx: the same layers with the target plus mattr +amx-int8,+amx-tile (AMX tdpbusd kernels) vs without.

    python scripts/bench_kernels.py                      # 1 and 2 threads, table on stdout
    python scripts/bench_kernels.py --threads 1 --json out/bench_kernels.json
    python scripts/bench_kernels.py --ort                # also onnxruntime QLinearConv per layer
    python scripts/bench_kernels.py --e2e resnet18,squeezenet1_1 --threads 1,2 [--profile]
        # whole builtin models: compile time, bit-exactness vs reference.run, latency per thread count,
        # and (--profile) the time per PrimFunc / VM builtin from a VM instrument

With 1 thread the reported ms is the minimum thread-CPU time per call (robust against other jobs on a
shared machine), with more threads the minimum wall time. Each layer is timed as the whole Relax call (NCHW uint8 in -> requantized NCHW uint8 out, including the
pack/unpack layout stages) and, with --blocked, as the kernel a compiled graph runs: NCHW16c output, and
NCHW16c input where C is a multiple of 16 (legalize/layout.py keeps activations blocked between kernels).
GOP/s counts 2 ops per MAC. % of peak is against --peak GOP/s per core x threads; the default 466 is a
register-resident vpdpbusd zmm loop measured on this machine's Zen 4 (1 vpdpbusd/cycle at ~3.6 GHz),
--measure-peak re-measures it with gcc.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name, C, H, O, k, stride, pad, count in the network
RESNET18 = [
    ("conv1 7x7/2", 3, 224, 64, 7, 2, 3, 1),
    ("layer1 3x3", 64, 56, 64, 3, 1, 1, 4),
    ("layer2.0 3x3/2", 64, 56, 128, 3, 2, 1, 1),
    ("layer2 3x3", 128, 28, 128, 3, 1, 1, 3),
    ("layer2 ds 1x1/2", 64, 56, 128, 1, 2, 0, 1),
    ("layer3.0 3x3/2", 128, 28, 256, 3, 2, 1, 1),
    ("layer3 3x3", 256, 14, 256, 3, 1, 1, 3),
    ("layer3 ds 1x1/2", 128, 28, 256, 1, 2, 0, 1),
    ("layer4.0 3x3/2", 256, 14, 512, 3, 2, 1, 1),
    ("layer4 3x3", 512, 7, 512, 3, 1, 1, 3),
    ("layer4 ds 1x1/2", 256, 14, 512, 1, 2, 0, 1),
    ("fc 512->1000", 512, 1, 1000, 0, 1, 0, 1),
]



def mobilenet_v2_layers():
    """Unique (conv) shapes of MobileNetV2 at 224x224 with their counts: (name, C, H, O, k, s, pad, count, groups)."""
    layers = {}

    def add(name, C, H, O, k, s, groups=1):
        key = (C, H, O, k, s, groups)
        if key in layers:
            layers[key][1] += 1
        else:
            layers[key] = [name, 1]

    add("stem 3x3/2", 3, 224, 32, 3, 2)
    add("dw 3x3", 32, 112, 32, 3, 1, 32)
    add("pw 1x1", 32, 112, 16, 1, 1)
    cin, res = 16, 112
    for t, c, n, s in [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            st = s if i == 0 else 1
            hid = cin * t
            add("expand 1x1", cin, res, hid, 1, 1)
            add(f"dw 3x3/{st}" if st > 1 else "dw 3x3", hid, res, hid, 3, st, hid)
            res = (res - 1) // st + 1
            add("project 1x1", hid, res, c, 1, 1)
            cin = c
    add("head 1x1", 320, 7, 1280, 1, 1)
    out = [(name, C, H, O, k, s, (k - 1) // 2, cnt, g) for (C, H, O, k, s, g), (name, cnt) in layers.items()]
    out.append(("fc 1280->1000", 1280, 1, 1000, 0, 1, 0, 1, 1))
    return out


PEAK_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
int main(){
  __m512i acc[12]; for(int i=0;i<12;i++) acc[i]=_mm512_set1_epi32(i);
  __m512i a=_mm512_set1_epi32(0x01010101), b=_mm512_set1_epi32(0x01020304);
  long iters=50000000; struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
  for(long it=0;it<iters;it++){
    #pragma GCC unroll 12
    for(int i=0;i<12;i++) acc[i]=_mm512_dpbusd_epi32(acc[i],a,b);
    __asm__ volatile("" : "+v"(a));
  }
  clock_gettime(CLOCK_MONOTONIC,&t1);
  double s=(t1.tv_sec-t0.tv_sec)+1e-9*(t1.tv_nsec-t0.tv_nsec);
  int sum=0; for(int i=0;i<12;i++) sum+=_mm512_reduce_add_epi32(acc[i]);
  printf("%f %d\n", iters*12.0*64*2/s/1e9, sum & 1);
}
"""


def measure_peak() -> float:
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "peak.c", Path(d) / "peak"
        src.write_text(PEAK_C)
        subprocess.run(["gcc", "-O2", "-mavx512f", "-mavx512vnni", str(src), "-o", str(exe)], check=True)
        return max(float(subprocess.run([str(exe)], capture_output=True, text=True).stdout.split()[0])
                   for _ in range(3))


def layer_params(rng, C, O, k, stride, pad, groups=1):
    from isquant_tvm.kernels import QConv2dParams

    kk = max(k, 1)
    return QConv2dParams(weight=rng.integers(-127, 128, (O, C // groups, kk, kk)).astype(np.int8),
                         bias=rng.integers(-1000, 1000, O).astype(np.int32),
                         multiplier=rng.integers(2 ** 30, 2 ** 31, O).astype(np.int64),
                         shift=np.full(O, 40, np.int64), strides=(stride, stride), padding=(pad,) * 4,
                         dilation=(1, 1), groups=groups, out_dtype="uint8", out_min=0, out_max=255)


def time_call(fn, args, single_thread: bool, stats: dict | None = None):
    """(min wall ms, min thread-CPU ms or None). With one TVM thread the kernel runs on the calling thread,
    so thread CPU time is immune to preemption by other jobs on this shared machine; with more threads
    only the wall-clock minimum is meaningful."""
    import time

    for _ in range(5):
        fn()
    best_wall = best_cpu = float("inf")
    walls, cpus = [], []
    for _ in range(args.repeat):
        w0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(args.number):
            fn()
        walls.append((time.perf_counter() - w0) / args.number)
        cpus.append((time.thread_time() - c0) / args.number)
        best_wall = min(best_wall, walls[-1])
        best_cpu = min(best_cpu, cpus[-1])
    if stats is not None:  # medians over the repeats (same clock choice as the minimum)
        stats["median_ms"] = float(np.median(cpus if single_thread else walls)) * 1e3
    return best_wall * 1e3, (best_cpu * 1e3 if single_thread else None)


def bench_worker(args) -> list[dict]:
    import tvm
    from tvm import relax

    from isquant_tvm.kernels import QDenseParams, geometry, lower_conv2d, lower_dense, x86_amx, x86_amx_blocked, x86_vnni

    target = tvm.target.Target(json.loads(args.target))
    rng = np.random.default_rng(0)
    rows = []
    table = mobilenet_v2_layers() if args.model == "mobilenet_v2" else [r + (1,) for r in RESNET18]
    for name, C, H, O, k, stride, pad, count, groups in table:
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        p = layer_params(rng, C, O, k, stride, pad, groups)
        dense = k == 0
        x_shape = (1, C) if dense else (1, C, H, H)
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(x_shape, "uint8"))
        with bb.function("main", [x]):
            with bb.dataflow():
                if dense:
                    dp = QDenseParams(weight=p.weight[:, :, 0, 0], bias=p.bias, multiplier=p.multiplier,
                                      shift=p.shift, out_dtype="uint8", out_min=0, out_max=255)
                    y = lower_dense(bb, x, dp, target)
                else:
                    y = lower_conv2d(bb, x, p, target)
                o = bb.emit_output(y)
            bb.emit_func_output(o)
        ex = relax.build(bb.get(), target=target)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        xd = tvm.runtime.tensor(rng.integers(0, 256, x_shape).astype("uint8"))
        stats: dict = {}
        ms, cpu_ms = time_call(lambda: vm["main"](xd), args, single_thread=args.threads_now == 1, stats=stats)
        g = geometry.conv_geom((1, C, max(H, 1), max(H, 1)), p)
        macs = g.macs
        shape = f"{C}x{H}x{H}->{O} k{k} s{stride}" + (f" g{groups}" if groups > 1 else "")
        row = {"layer": name, "shape": shape, "count": count, "macs": macs,
               "wall_ms": ms, "cpu_ms": cpu_ms, "median_ms": stats["median_ms"]}
        row["ms"] = cpu_ms if cpu_ms is not None else ms
        row["gops"] = 2 * macs / row["ms"] / 1e6
        if args.blocked and not dense and groups == 1:
            cfg = x86_vnni.config_for(target)
            gb = g
            if C % 16 == 0 and x86_amx.has_amx(target):  # what lower_conv2d_blocked picks on AMX targets
                ga, _ = x86_amx_blocked.blocked_geom((1, C // 16, H, H, 16), p)
                func = x86_amx_blocked.build_primfunc(ga, p, "uint8", blocked_out=True)
            else:
                if C % 16 == 0:  # as in a compiled graph (legalize/layout.py): NCHW16c in as well as out
                    gb = geometry.conv_geom((1, C // 16, H, H, 16), p, ow_tile_max=cfg.ow_tile_max, blocked_in=True,
                                          ic_dot=cfg.ic_dot)
                func = x86_vnni.build_conv_primfunc(gb, p, "uint8", cfg, blocked_out=True)
            func = func.with_attr("global_symbol", "main")
            lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
            targs = [tvm.runtime.tensor(np.zeros([int(d) for d in prm.shape], str(prm.dtype))) for prm in func.params]
            fn = lib.mod["main"]
            bstats: dict = {}
            wall, cpu = time_call(lambda: fn(*targs), args, single_thread=args.threads_now == 1, stats=bstats)
            row["blocked_ms"] = cpu if cpu is not None else wall
            row["blocked_median_ms"] = bstats["median_ms"]
            row["blocked_gops"] = 2 * macs / row["blocked_ms"] / 1e6
        if args.ort and not dense and groups == 1:
            row.update(bench_ort(p, (1, C, H, H), args.threads_now))
        rows.append(row)
    return rows


def bench_ort(p, x_shape, threads) -> dict:
    """onnxruntime QLinearConv (u8 act, s8 per-channel weight, u8 out) on the same layer."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return {}
    import time

    O = p.weight.shape[0]
    inits = [
        helper.make_tensor("xs", TensorProto.FLOAT, [], [0.02]),
        helper.make_tensor("xz", TensorProto.UINT8, [], [0]),
        helper.make_tensor("w", TensorProto.INT8, p.weight.shape, p.weight.tobytes(), raw=True),
        helper.make_tensor("ws", TensorProto.FLOAT, [O], [0.01] * O),
        helper.make_tensor("wz", TensorProto.INT8, [O], [0] * O),
        helper.make_tensor("ys", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("yz", TensorProto.UINT8, [], [0]),
        helper.make_tensor("b", TensorProto.INT32, [O], p.bias.tolist()),
    ]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            kernel_shape=list(p.weight.shape[2:]), strides=list(p.strides),
                            pads=[p.padding[0], p.padding[1], p.padding[2], p.padding[3]])
    graph = helper.make_graph([node], "l", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, x_shape).astype(np.uint8)
    for _ in range(5):
        sess.run(None, {"x": x})
    best = 1e9
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(10):
            sess.run(None, {"x": x})
        best = min(best, (time.perf_counter() - t0) / 10)
    return {"ort_ms": best * 1e3}


E2E_INPUT_SEED = 1


def e2e_input(shape) -> np.ndarray:
    return ((np.random.default_rng(E2E_INPUT_SEED).random(shape, dtype=np.float32) - 0.45) / 0.225).astype("float32")


def e2e_profile(vm, args, runs: int = 12) -> list[dict]:
    """Time of every VM call (median over runs), grouped by callee: thread-CPU time at 1 thread, wall
    time with more (the workers' time is not the calling thread's)."""
    import collections
    import time

    calls: list = []
    start: dict = {}
    clock = time.thread_time if os.environ.get("TVM_NUM_THREADS", "1") == "1" else time.perf_counter

    def instrument(func, sym, before, ret, *a):
        if before:
            start["t"] = clock()
        else:
            calls.append((sym, clock() - start["t"]))
        return 0

    vm.set_instrument(instrument)
    runs_calls = []
    for _ in range(runs):
        calls.clear()
        vm["main"](*args)
        runs_calls.append(list(calls))
    total: dict = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for j, (sym, _) in enumerate(runs_calls[0]):
        total[sym] += float(np.median([r[j][1] for r in runs_calls[1:]]))
        count[sym] += 1
    return [{"func": k, "calls": count[k], "ms": v * 1e3} for k, v in sorted(total.items(), key=lambda kv: -kv[1])]


def e2e_worker(args) -> dict:
    """Time an exported library (TVM_NUM_THREADS is set by the parent)."""
    import time

    import tvm
    from tvm import relax

    meta = json.loads(Path(args.lib + ".json").read_text())
    inp = meta["inputs"][0]
    x = tvm.runtime.tensor(e2e_input(tuple(inp["shape"])))
    vm = relax.VirtualMachine(tvm.runtime.load_module(args.lib), tvm.cpu())
    for _ in range(5):
        vm["main"](x)
    wall, cpu = [], []
    for _ in range(args.repeat * 3):
        w0, c0 = time.perf_counter(), time.thread_time()
        vm["main"](x)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.thread_time() - c0)
    out = {"median_ms": float(np.median(wall)) * 1e3, "min_ms": float(np.min(wall)) * 1e3,
           "cpu_median_ms": float(np.median(cpu)) * 1e3}
    if args.profile:
        out["profile"] = e2e_profile(vm, [x])
    return out


def run_e2e(args) -> dict:
    """Compile each builtin model (timed), check it bit for bit against reference.run, export it and time
    it in one subprocess per thread count."""
    import time

    import isquant_tvm as iq
    from isquant_tvm.reference import interpreter as reference

    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    for name in args.e2e.split(","):
        t0 = time.perf_counter()
        model = iq.load(f"builtin:{name}")
        res = iq.compile(model, target=json.loads(args.target), quantize="isquant", progress=False,
                         output=tmp / f"{name}.so")
        compile_s = time.perf_counter() - t0
        x = e2e_input(model.inputs[0].shape)
        y = res.runner().run({model.inputs[0].name: x})[0]
        exact = bool((y == reference.run(res.quantized.qnn_mod, [x])[0]).all())
        row = {"compile_s": compile_s, "timings": res.report.get("timings", {}), "bit_exact": exact,
               "lowerings": res.report.get("lowerings", {}), "threads": {}}
        print(f"\n== {name}: compile {compile_s:.1f} s, bit-exact {exact}")
        print("   lowerings: " + ", ".join(f"{k}={v}" for k, v in row["lowerings"].items()))
        for th in [int(t) for t in args.threads.split(",")]:
            env = dict(os.environ, TVM_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th))
            cmd = [sys.executable, __file__, "--e2e-worker", str(tmp / f"{name}.so"), "--repeat", str(args.repeat)] + \
                (["--profile"] if args.profile else [])
            r = _run_worker(cmd, env, f"e2e worker for {name} with {th} threads")
            row["threads"][str(th)] = r
            print(f"   {th} thread(s): median {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, "
                  f"thread-CPU median {r['cpu_median_ms']:.2f} ms)")
            if "profile" in r:
                prof = r["profile"]
                tot = sum(p["ms"] for p in prof)
                groups: dict = {}
                for p in prof:
                    f = p["func"]
                    g = "conv/dense kernels" if f.startswith(("qconv2d", "qdense")) else \
                        "vm builtins" if f.startswith("vm.") else "glue (qnn_*)" if f.startswith("qnn_") else "other Relax ops"
                    groups[g] = groups.get(g, 0.0) + p["ms"]
                clock = "thread CPU" if th == 1 else "wall"
                print(f"   profile ({clock}, {th} thread(s)): {tot:.2f} ms = " +
                      ", ".join(f"{g} {v:.2f}" for g, v in sorted(groups.items(), key=lambda kv: -kv[1])))
                for p in prof[:args.profile_top]:
                    print(f"      {p['ms']:7.3f} ms {p['calls']:4d}x {p['func']}")
        results[name] = row
    return results


def _run_worker(cmd: list, env: dict, what: str):
    """Run a measuring subprocess; its last stdout line is the JSON result."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{what} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def amx_target(spec: dict) -> dict:
    out = dict(spec)
    out["mattr"] = sorted(set(out.get("mattr", [])) | {"+amx-int8", "+amx-tile"})
    return out


def run_amx_compare(args) -> None:
    """Per layer: the base target (VNNI) vs the same target with AMX, median ms and GOP/s."""
    base = json.loads(args.target)
    results = {"model": args.model, "vnni_target": base, "amx_target": amx_target(base), "runs": {}}
    for th in [int(t) for t in args.threads.split(",")]:
        env = dict(os.environ, TVM_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th))
        rows = {}
        for kind, tgt in (("vnni", base), ("amx", amx_target(base))):
            cmd = [sys.executable, __file__, "--worker", str(th), "--target", json.dumps(tgt), "--number",
                   str(args.number), "--repeat", str(args.repeat), "--only", args.only, "--model", args.model] + \
                (["--blocked"] if args.blocked else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stderr)
                raise SystemExit(f"{kind} worker with {th} threads failed")
            rows[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        results["runs"][str(th)] = rows
        clock = "thread-CPU" if th == 1 else "wall"
        print(f"\n== {th} thread(s): median {clock} ms per call over {args.repeat} repeats x {args.number} ==")
        print(f"{'layer':18s} {'shape':26s} {'VNNI ms':>8s} {'GOP/s':>6s} {'AMX ms':>8s} {'GOP/s':>6s} {'AMX/VNNI':>8s}")
        tv = ta = 0.0
        # with --blocked: the kernels as a compiled graph runs them (NCHW16c in and out; on AMX targets the
        # blocked-data AMX conv, kernels/x86_amx_blocked.py), else NCHW in and out through lower_conv2d
        key = "blocked_median_ms" if args.blocked else "median_ms"
        for v, a in zip(rows["vnni"], rows["amx"]):
            mv, ma = v.get(key, v["median_ms"]), a.get(key, a["median_ms"])
            gv, ga = 2 * v["macs"] / mv / 1e6, 2 * a["macs"] / ma / 1e6
            tv += mv * v["count"]
            ta += ma * a["count"]
            print(f"{v['layer']:18s} {v['shape']:26s} {mv:8.3f} {gv:6.0f} {ma:8.3f} {ga:6.0f} {mv / ma:7.2f}x")
        print(f"all {args.model} convs+fc (with repeats): VNNI {tv:.2f} ms, AMX {ta:.2f} ms ({tv / ta:.2f}x)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma list of TVM_NUM_THREADS values")
    ap.add_argument("--target", default=json.dumps({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}))
    ap.add_argument("--peak", type=float, default=466.0, help="VNNI peak GOP/s per core")
    ap.add_argument("--measure-peak", action="store_true")
    ap.add_argument("--blocked", action="store_true", help="also time the kernel with blocked (NCHWc) output")
    ap.add_argument("--ort", action="store_true", help="also time onnxruntime QLinearConv")
    ap.add_argument("--only", default="", help="comma list of layer-name substrings")
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "mobilenet_v2"])
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", default="", help="write results here")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--e2e", default="", help="comma list of builtin models to compile, check and time end to end")
    ap.add_argument("--profile", action="store_true", help="with --e2e: time per PrimFunc (thread CPU at 1 thread, wall at more)")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--e2e-worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--amx", action="store_true",
                    help="also run every layer with --target plus mattr +amx-int8,+amx-tile (Intel AMX tdpbusd "
                         "kernels where the dispatcher picks them) and print AMX vs VNNI per layer (medians)")
    args = ap.parse_args()
    if args.e2e_worker:
        args.lib = args.e2e_worker
        print(json.dumps(e2e_worker(args)))
        return
    if args.e2e:
        results = run_e2e(args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))
            print(f"wrote {args.json}")
        return
    if args.worker:
        args.threads_now = args.worker
        print(json.dumps(bench_worker(args)))
        return
    if args.amx:
        run_amx_compare(args)
        return
    peak = measure_peak() if args.measure_peak else args.peak
    results = {"model": args.model, "target": json.loads(args.target), "peak_gops_per_core": peak, "runs": {}}
    for th in [int(t) for t in args.threads.split(",")]:
        env = dict(os.environ, TVM_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th))
        cmd = [sys.executable, __file__, "--worker", str(th), "--target", args.target, "--number", str(args.number),
               "--repeat", str(args.repeat), "--only", args.only, "--model", args.model] + (["--blocked"] if args.blocked else []) + \
            (["--ort"] if args.ort else [])
        rows = _run_worker(cmd, env, f"worker with {th} threads")
        results["runs"][str(th)] = rows
        print(f"\n== {th} thread(s), peak {peak * th:.0f} GOP/s ==")
        hdr = f"{'layer':18s} {'shape':26s} {'ms':>7s} {'GOP/s':>7s} {'%peak':>6s}"
        if args.blocked:
            hdr += f" {'blk ms':>7s} {'blk GOP/s':>9s}"
        if args.ort:
            hdr += f" {'ORT ms':>7s}"
        print(hdr)
        tot = tot_b = tot_o = 0.0
        for r in rows:
            r["pct_peak"] = 100 * r["gops"] / (peak * th)
            line = f"{r['layer']:18s} {r['shape']:26s} {r['ms']:7.3f} {r['gops']:7.0f} {r['pct_peak']:5.0f}%"
            tot += r["ms"] * r["count"]
            if args.blocked and "blocked_ms" in r:
                line += f" {r['blocked_ms']:7.3f} {r['blocked_gops']:9.0f}"
                tot_b += r["blocked_ms"] * r["count"]
            if args.ort and "ort_ms" in r:
                line += f" {r['ort_ms']:7.3f}"
                tot_o += r["ort_ms"] * r["count"]
            print(line)
        macs = sum(r["macs"] * r["count"] for r in rows)
        summary = {"total_ms": tot, "total_gops": 2 * macs / tot / 1e6 if tot else 0.0}
        if tot_o:
            summary["ort_total_ms"] = tot_o
        results["runs"][str(th) + "_summary"] = summary
        print(f"all {args.model} convs+fc (with repeats): {tot:.2f} ms, {summary['total_gops']:.0f} GOP/s"
              + (f"; ORT {tot_o:.2f} ms" if tot_o else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
