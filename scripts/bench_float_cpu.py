"""Thread-CPU comparison of a `--quantize none` build against onnxruntime fp32, one thread, interleaved in one
process: `PYTHONPATH=. .venv/bin/python scripts/bench_float_cpu.py mobilenet_v3_small yolov8n ...`.

Why thread-CPU: on a shared 2-core host (load average 5 while four sessions run) wall-clock medians are
dominated by preemption (onnxruntime's own mobilenet_v3_small went from 2.1 to 14.8 ms between the 1- and
2-thread columns of one scripts/bench.py run). `time.thread_time()` of the calling thread excludes preemption;
with TVM_NUM_THREADS=1 and intra_op_num_threads=1 both engines run every kernel on that thread. Cache
contention from other jobs still shows (+-10-15% between runs). Not valid for more than one thread.
Builds go to /tmp/isquant-bench-float/<model>.so and are reused (delete them after changing kernels)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import isquant_tvm as iq  # noqa: E402
from isquant_tvm.frontend import zoo  # noqa: E402
from isquant_tvm.util import tvm_compat  # noqa: E402


def main(models: list[str], rounds: int = 5, runs: int = 15) -> None:
    work = Path("/tmp/isquant-bench-float")
    work.mkdir(exist_ok=True)
    for model in models:
        so = work / f"{model}.so"
        if not so.exists():
            iq.compile(f"builtin:{model}", target="x86", quantize="none", progress=False, output=so)
        vm = relax.VirtualMachine(tvm_compat.load_module(str(so)), tvm.cpu())
        proto = zoo.builtin_onnx(model, batch=1)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        xt, name = tvm.runtime.tensor(x), sess.get_inputs()[0].name
        y = vm["main"](xt)
        y_tvm = (y if hasattr(y, "numpy") else y[0]).numpy()
        y_ort = sess.run(None, {name: x})[0]
        rel = float(np.abs(y_tvm - y_ort).max() / np.abs(y_ort).max())
        engines = {"ort": lambda: sess.run(None, {name: x}), "tvm": lambda: vm["main"](xt)}
        for fn in engines.values():
            for _ in range(3):
                fn()
        medians: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(rounds):  # interleaved: a burst of load hits one round of each engine
            for key, fn in engines.items():
                times = []
                for _ in range(runs):
                    t = time.thread_time()
                    fn()
                    times.append(time.thread_time() - t)
                medians[key].append(float(np.median(times)))
        t_tvm, t_ort = np.median(medians["tvm"]) * 1e3, np.median(medians["ort"]) * 1e3
        print(f"{model:20s} tvm-fp32 {t_tvm:7.2f} ms  ort-fp32 {t_ort:7.2f} ms  ratio {t_tvm / t_ort:4.2f}  "
              f"max rel diff {rel:.1e}  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["mobilenet_v3_small", "mobilenet_v3_large", "yolov8n", "dbnet_mv3"])
