"""MetaSchedule tuning of the int8 conv/dense kernels, and applying the records at compile time.

Design (`python -m isquant_tvm tune` / :func:`tune`):

* The model is imported and quantized exactly as `compile` does. While the qnn ops are legalized, every
  hand-scheduled conv/dense kernel (kernels.schedule.build_conv_primfunc) is captured together with its
  *unscheduled* twin: the same TE compute (pack -> conv -> epilogue [-> unpack]) before our schedule.
* Each distinct kernel PrimFunc of the legalized module is one task. Its unscheduled twin is tuned with
  MetaSchedule (``tvm.s_tir.meta_schedule``); on targets whose kernel config has a tensor intrinsic (x86
  AVX-512 VNNI: the project's fixed ``dot_16x4_vnni_llvm22``) the space is MultiLevelTilingWithIntrin on
  that intrinsic, else plain MultiLevelTiling. The pack stage may not be inlined (it would hide the
  uint8 operand from the intrinsic), so RandomComputeLocation is left out of the space.
* After tuning, the default (hand) schedule and the best tuned schedule of each task are built and timed
  with the same builder and runner (local, or RPC through a tracker), interleaved. A task is *kept* only
  when its tuned schedule measured at least ``min_speedup`` times faster.
* Then the whole model is timed untuned and with the kept tasks (local runner, interleaved rounds at the
  tune's thread count); if the tuned build is not faster, no task stays kept (:func:`check_whole_model`).
* ``out_dir`` holds the MetaSchedule JSON database (database_workload.json, database_tuning_record.json),
  MetaSchedule's logs (logs/) and ``summary.json`` (per task: structural hashes of the default and tuned
  PrimFuncs and of the workload, default_ms, tuned_ms, speedup, kept).

At compile (:func:`apply_records`), a PrimFunc of the legalized module whose structural hash equals a
*kept* task's default hash is replaced by the database's best schedule of that task's workload (checked
against the recorded tuned hash). Tasks not kept, and functions of other models, stay as they are, so a
tuned build is never slower than the untuned one as far as the tune-time whole-model measurement could
tell, and its results are identical (same compute, only the loop schedule differs).

Every TVM-version-sensitive call of the tuning path is in this module.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tvm

from ..util import tvm_compat
from ..errors import IsquantError

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
DB_WORKLOAD = "database_workload.json"
DB_RECORDS = "database_tuning_record.json"
SUMMARY_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# small TVM-version-sensitive helpers
# ----------------------------------------------------------------------------------------------

def _ms():
    from tvm.s_tir import meta_schedule as ms

    return ms


def shash(obj: Any) -> str:
    """Structural hash as 16 hex digits (stable across processes: MetaSchedule keys its database on it)."""
    import tvm_ffi

    return f"{int(tvm_ffi.structural_hash(obj)) & 0xFFFFFFFFFFFFFFFF:016x}"


def _as_main(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _drop_in(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """A tuned PrimFunc with the attributes our kernels carry (no global symbol, marked scheduled)."""
    from ..kernels.compute import prim_func_attrs

    return prim_func_attrs(func, "")


# ----------------------------------------------------------------------------------------------
# capturing the kernels' unscheduled computes during legalization
# ----------------------------------------------------------------------------------------------

@dataclass
class Task:
    """One distinct kernel PrimFunc of the legalized module."""

    name: str
    default: tvm.tirx.PrimFunc  # our hand schedule, as in the module
    workload: tvm.tirx.PrimFunc  # the same compute, unscheduled
    intrin: str | None
    macs: int
    calls: int = 0

    @property
    def default_hash(self) -> str:
        return shash(self.default)


@dataclass
class _Captured:
    workload: tvm.tirx.PrimFunc
    intrin: str | None
    macs: int


def unscheduled_conv_primfunc(g: Any, p: Any, in_dtype: str, cfg: Any, blocked_out: bool = False) -> tvm.tirx.PrimFunc:
    """The TE compute of kernels.schedule.build_conv_primfunc before schedule_conv (same parameters)."""
    from tvm import te

    from ..kernels import compute, geometry

    # the ARM int32 epilogue as int64 TIR ("host"), same constants as the NEON form: MetaSchedule vectorises
    # epilogues 16 lanes wide, where the sqdmulh/srshl intrinsics abort LLVM and every sampled schedule failed
    # ("no valid tuned schedule" on the board); the tuned kernel is kept only if it times faster anyway
    q31 = "host" if cfg.q31_epilogue else ""
    data, wpk, bias, epi, outs = compute.conv_compute(g, p, in_dtype, cfg.dot_in_dtype, blocked_out, cfg.w_layout,
                                                     cfg.w_dtype, hi32=cfg.hi32_epilogue, q31=q31)
    func = te.create_prim_func([data, wpk, bias] + [epi[k] for k in sorted(epi)] + outs)
    if geometry.int32_form(epi):
        func = compute.start_from_bias(func)
    return func.with_attr("tirx.noalias", True)


@contextlib.contextmanager
def capture_kernels() -> Iterator[dict[str, _Captured]]:
    """While active, every conv/dense kernel built by kernels.schedule is recorded by the structural hash of
    its scheduled PrimFunc, with its unscheduled twin."""
    from ..kernels import schedule

    captured: dict[str, _Captured] = {}

    def record(func, g, p, in_dtype, cfg, blocked_out) -> None:
        try:
            captured[shash(func)] = _Captured(unscheduled_conv_primfunc(g, p, in_dtype, cfg, blocked_out),
                                              cfg.intrin, int(g.macs))
        except Exception as err:  # noqa: BLE001 - a kernel we cannot re-derive is simply not tuned
            log.warning("cannot derive the unscheduled compute of %s: %s", cfg.name, err)

    with schedule.conv_build_hook(record):
        yield captured


def _call_counts(mod: tvm.IRModule) -> dict[str, int]:
    from tvm import relax

    counts: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call):
            for arg in expr.args:
                if isinstance(arg, tvm.ir.GlobalVar):
                    counts[arg.name_hint] = counts.get(arg.name_hint, 0) + 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def extract_tasks(mod: tvm.IRModule, captured: Mapping[str, _Captured]) -> list[Task]:
    """Kernel PrimFuncs of `mod` that have a captured workload, heaviest (calls x MACs) first."""
    calls = _call_counts(mod)
    tasks = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        cap = captured.get(shash(func))
        if cap is None:
            continue
        tasks.append(Task(gv.name_hint, func, cap.workload, cap.intrin, cap.macs, calls.get(gv.name_hint, 0)))
    tasks.sort(key=lambda t: (-t.macs * max(t.calls, 1), t.name))
    return tasks


# ----------------------------------------------------------------------------------------------
# search space, builder, runner
# ----------------------------------------------------------------------------------------------

def space_for(intrin: str | None) -> Any:
    """PostOrderApply with the x86 rules rebuilt in Python around our intrinsic (tvm-feasibility §4d)."""
    ms = _ms()
    from tvm.s_tir.meta_schedule.schedule_rule import (AddRFactor, AutoInline, MultiLevelTiling,
                                                        MultiLevelTilingWithIntrin, ParallelizeVectorizeUnroll,
                                                        ReuseType)

    reuse = ReuseType(req="may", levels=[1, 2], scope="global")
    if intrin is not None:
        tiling = MultiLevelTilingWithIntrin(intrin, structure="SSRSRS", max_innermost_factor=64, reuse_write=reuse)
    else:
        tiling = MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64, reuse_write=reuse)
    rules = [
        AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True, disallow_if_then_else=True,
                   require_injective=True, require_ordered=True, disallow_op=["tirx.exp"]),
        AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        tiling,
        ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                   unroll_max_steps=[0, 16, 64], unroll_explicit=True),
    ]
    # unroll 512 is left out: on a 2-core machine its builds took minutes per batch, for no measured gain
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs="from-target", mutator_probs="from-target")


def _export_so(rt_mod: Any, cc: str) -> str:
    """MetaSchedule export for a foreign board: a shared library linked by the cross compiler."""
    from tvm.support import cc as _cc

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    rt_mod.export_library(path, fcompile=_cc.cross_compiler(cc))
    return path


def _build_kernel(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> Any:
    """MetaSchedule's default_build without its `import tvm.s_tir.tensor_intrin`: that import parses every
    shipped intrinsic (30-50 s per fresh builder process here, and LocalBuilder starts fresh processes for
    every batch). A tensorized candidate already holds the intrinsic's body, so nothing is lost."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _import_tensor_intrin() -> None:
    """TuneContext imports tvm.s_tir.tensor_intrin; do it first under the kernels' cheap TVMScript parsing
    (~5 s instead of ~35 s)."""
    from ..kernels.common import cheap_tvmscript_parsing

    with cheap_tvmscript_parsing():
        import tvm.s_tir.tensor_intrin  # noqa: F401


def make_builder(target: tvm.target.Target, timeout: float, cross_compiler: str | None = None,
                 max_workers: int | None = None) -> Any:
    ms = _ms()
    from ..build.export import resolve_cross_compiler

    compiler = resolve_cross_compiler(target, cross_compiler)
    kwargs: dict[str, Any] = {"timeout_sec": timeout, "f_build": _build_kernel}
    if max_workers:
        kwargs["max_workers"] = max_workers
    if compiler:
        kwargs["f_export"] = functools.partial(_export_so, cc=compiler)
    return ms.builder.LocalBuilder(**kwargs)


def parse_tracker(tracker: str) -> tuple[str, int]:
    from ..runtime.rpc import DEFAULT_TRACKER_PORT, parse_address

    return parse_address(tracker, DEFAULT_TRACKER_PORT, "--rpc-tracker")


def check_board(rpc_tracker: str | None, rpc_key: str | None, timeout: float = 10.0) -> None:
    """Fail fast (TVM's tracker session retries a dead tracker for minutes per candidate): the tracker must
    answer and know `rpc_key`."""
    if not (rpc_tracker or rpc_key):
        return
    if not (rpc_tracker and rpc_key):
        raise IsquantError("tuning on a board needs both --rpc-tracker HOST[:PORT] and --rpc-key KEY")
    from ..errors import RPCError
    from ..runtime.rpc import registered_keys, tracker_summary

    host, port = parse_tracker(rpc_tracker)
    keys = registered_keys(tracker_summary(host, port, timeout))
    if rpc_key not in keys:
        raise RPCError(f"the tracker at {host}:{port} has no server with key {rpc_key!r}"
                       f" (registered: {', '.join(keys) or 'none'}); start one with python -m tvm.exec.rpc_server"
                       f" --tracker {host}:{port} --key {rpc_key}")


def _random_array(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> np.ndarray:
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=list(shape)).astype(dtype)
    return rng.standard_normal(list(shape)).astype(dtype)


def _alloc_argument_numpy(session: Any, device: Any, args_info: Any, alloc_repeat: int) -> list[list[Any]]:
    """RPCRunner argument allocation filled from numpy on the host: MetaSchedule's default calls
    tvm.contrib.random.random_fill_for_measure on the board, which a runtime-only TVM (a board's) lacks."""
    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for info in args_info:
            kind, dtype, shape = info[0], str(info[1]), [int(d) for d in info[2]]
            if kind != "TENSOR":
                raise NotImplementedError(f"argument kind {kind}")
            args.append(tvm.runtime.tensor(_random_array(rng, shape, dtype), device))
        repeated.append(args)
    return repeated


def make_runner(timeout: float, number: int, repeat: int, rpc_tracker: str | None = None,
                rpc_key: str | None = None) -> Any:
    """LocalRunner, or RPCRunner on a board reached through a tracker (same --rpc-tracker/--rpc-key syntax as
    `run`)."""
    ms = _ms()
    config = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=0, enable_cpu_cache_flush=False)
    if rpc_tracker or rpc_key:
        if not (rpc_tracker and rpc_key):
            raise IsquantError("tuning on a board needs both --rpc-tracker HOST[:PORT] and --rpc-key KEY")
        host, port = parse_tracker(rpc_tracker)
        rpc = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                  session_timeout_sec=int(max(timeout, 10)))
        return ms.runner.RPCRunner(rpc_config=rpc, evaluator_config=config, max_workers=1,
                                   f_alloc_argument=_alloc_argument_numpy)
    return ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=config)


def _device_type(target: tvm.target.Target) -> str:
    kind = str(target.kind.name)
    return "cpu" if kind in ("llvm", "c") else kind


def ms_target(target: tvm.target.Target) -> tvm.target.Target:
    """MetaSchedule insists on "num-cores" in the target: add this machine's when it is missing."""
    if "num-cores" in target.attrs:
        return target
    spec = tvm_compat.target_dict(target)
    spec["num-cores"] = os.cpu_count() or 1
    return tvm_compat.make_target(spec)


def measure_local(funcs: Sequence[tvm.tirx.PrimFunc], target: tvm.target.Target, number: int, repeat: int,
                  rounds: int = 2, seed: int = 0) -> list[tuple[float | None, str | None]]:
    """In-process twin of `measure` for this machine: build each PrimFunc with tvm.compile and time it with
    time_evaluator on the same random arguments, interleaved `rounds` times (median ms)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    rng = np.random.default_rng(seed)
    dev = tvm.cpu(0)
    out: list[tuple[float | None, str | None]] = [(None, None)] * len(funcs)
    built: dict[int, tuple[Any, list[Any]]] = {}
    for i, f in enumerate(funcs):
        try:
            lib = tvm.compile(_as_main(f), target=target).jit()
            args = [tvm_compat.tensor(_random_array(rng, [int(d) for d in info.shape], str(info.dtype)), dev)
                    for info in ArgInfo.from_prim_func(f)]
            built[i] = (lib, args)
        except Exception as err:  # noqa: BLE001
            out[i] = (None, "build failed: " + (str(err).strip().splitlines() or [""])[-1])
    secs: dict[int, list[float]] = {}
    for _ in range(rounds):
        for i, (lib, args) in built.items():
            try:
                lib["main"](*args)  # warm up
                timer = lib.time_evaluator("main", dev, number=number, repeat=repeat)
                secs.setdefault(i, []).extend(float(v) for v in timer(*args).results)
            except Exception as err:  # noqa: BLE001
                out[i] = (None, "run failed: " + (str(err).strip().splitlines() or [""])[-1])
    for i, values in secs.items():
        if out[i][1] is None:
            out[i] = (float(np.median(values)) * 1e3, None)
    return out


def measure(funcs: Sequence[tvm.tirx.PrimFunc], target: tvm.target.Target, builder: Any, runner: Any,
            rounds: int = 2) -> list[tuple[float | None, str | None]]:
    """Median ms of each PrimFunc (None + the error when it did not build or run), measured interleaved
    `rounds` times with the same MetaSchedule builder and runner (the RPC path)."""
    ms = _ms()
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    built = builder.build([ms.builder.BuilderInput(_as_main(f), target) for f in funcs])
    out: list[tuple[float | None, str | None]] = [(None, None)] * len(funcs)
    inputs, owners = [], []
    for _ in range(rounds):
        for i, (f, b) in enumerate(zip(funcs, built)):
            if b.error_msg:
                out[i] = (None, "build failed: " + str(b.error_msg).strip().splitlines()[-1])
                continue
            inputs.append(ms.runner.RunnerInput(b.artifact_path, _device_type(target), ArgInfo.from_prim_func(f)))
            owners.append(i)
    secs: dict[int, list[float]] = {}
    errors: dict[int, str] = {}
    if inputs:
        for i, fut in zip(owners, runner.run(inputs)):
            res = fut.result()
            if res.error_msg:
                errors[i] = "run failed: " + str(res.error_msg).strip().splitlines()[-1]
            else:
                secs.setdefault(i, []).extend(float(s) for s in res.run_secs)
    for i in set(owners):
        out[i] = (float(np.median(secs[i])) * 1e3, None) if i in secs else (None, errors.get(i, "no result"))
    for b in built:
        if b.artifact_path:
            shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------

@dataclass
class TaskResult:
    name: str
    default_hash: str
    workload_hash: str
    macs: int
    calls: int
    intrin: str | None
    trials: int = 0
    default_ms: float | None = None
    tuned_ms: float | None = None
    tuned_hash: str | None = None
    kept: bool = False
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if self.default_ms and self.tuned_ms:
            return self.default_ms / self.tuned_ms
        return None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["speedup"] = self.speedup
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "TaskResult":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class TuneReport:
    out_dir: Path
    target: dict[str, Any]
    source: str
    tasks: list[TaskResult]
    tune_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    quant_report: dict[str, Any] = field(default_factory=dict)  # the quantizer's per-layer report (not saved)
    whole_model: dict[str, Any] = field(default_factory=dict)  # check_whole_model's verdict

    @property
    def kept(self) -> list[TaskResult]:
        return [t for t in self.tasks if t.kept]

    def table(self) -> str:
        head = (f"{'task':<22}{'calls':>6}{'MMAC':>9}{'trials':>8}{'default ms':>12}{'tuned ms':>10}"
                f"{'speed-up':>10}  kept")
        lines = [head, "-" * len(head)]
        for t in self.tasks:
            d = f"{t.default_ms:.4f}" if t.default_ms is not None else "-"
            u = f"{t.tuned_ms:.4f}" if t.tuned_ms is not None else "-"
            s = f"{t.speedup:.2f}x" if t.speedup else "-"
            kept = "yes" if t.kept else ("no" + (f" ({t.note})" if t.note else ""))
            lines.append(f"{t.name:<22}{t.calls:>6}{t.macs / 1e6:>9.1f}{t.trials:>8}{d:>12}{u:>10}{s:>10}  {kept}")
        weighted = [(t.calls or 1) * t.default_ms for t in self.tasks if t.default_ms]
        saved = sum((t.calls or 1) * (t.default_ms - t.tuned_ms) for t in self.kept)
        lines.append(f"{len(self.kept)} of {len(self.tasks)} tasks kept; kernel time per inference"
                     f" {sum(weighted):.3f} -> {sum(weighted) - saved:.3f} ms (sum of calls x ms);"
                     f" tuning took {self.tune_seconds:.0f} s")
        w = self.whole_model
        if w.get("checked"):
            lines.append(f"whole model: untuned {w['untuned_ms']:.3f} ms, tuned {w['tuned_ms']:.3f} ms"
                         f" ({w['speedup']:.3f}x, median of {w['rounds']} interleaved rounds):"
                         + (" records kept" if w["kept"] else " not faster, records not applied"))
        elif w:
            lines.append(f"whole model: {w.get('note', 'not checked')}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        from ..util.version import __version__

        return {"format": SUMMARY_FORMAT, "tool": "isquant-tvm", "tool_version": __version__,
                "tvm_version": tvm_compat.TVM_VERSION, "source": self.source, "target": self.target,
                "settings": self.settings, "tune_seconds": self.tune_seconds,
                "tasks": [t.to_json() for t in self.tasks], "whole_model": self.whole_model}


def keep_decision(default_ms: float | None, tuned_ms: float | None, min_speedup: float) -> tuple[bool, str]:
    """Keep a tuned kernel only when both timings exist and tuned x min_speedup < default."""
    if default_ms is None or tuned_ms is None:
        return False, "not measured"
    if tuned_ms * min_speedup < default_ms:
        return True, ""
    return False, "not faster" if min_speedup <= 1.0 else f"< {min_speedup:g}x faster"


def time_whole_model(mods: Sequence[tvm.IRModule], target: tvm.target.Target, rounds: int = 5,
                     repeat: int = 20) -> list[float]:
    """Median ms of each module's `main` on this host, measured interleaved round by round (module A, B, A,
    B, ...) so a burst of another job's load hits every module alike; the median of the rounds' medians."""
    from tvm import relax

    from ..build.build import build

    dev = tvm.cpu()
    vms = [relax.VirtualMachine(build(m, target), dev) for m in mods]
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(_random_array(rng, [int(d) for d in p.ty.shape], str(p.ty.dtype)))
            for p in mods[0]["main"].params]
    per: list[list[float]] = [[] for _ in vms]
    for _ in range(rounds):
        for vm, times in zip(vms, per):
            vm["main"](*args)
            res = vm.time_evaluator("main", dev, number=1, repeat=repeat)(*args)
            times.append(float(np.median(res.results)) * 1e3)
    return [float(np.median(t)) for t in per]


def whole_model_keeps(untuned_ms: float, tuned_ms: float, min_speedup: float) -> bool:
    """Faster as a whole (min_speedup < 1, a forced keep, relaxes it)."""
    return tuned_ms * min(min_speedup, 1.0) < untuned_ms


def check_whole_model(report: TuneReport, mod: tvm.IRModule, target: tvm.target.Target, *, min_speedup: float,
                      remote: bool, rounds: int = 5, repeat: int = 20) -> None:
    """Time the model untuned and with the kept records; if the tuned build is not faster (by
    min(min_speedup, 1)), un-keep every task, so `compile --tuning-records` builds exactly the untuned model.

    Each kept task won its own timing, but kernels timed alone are not the model: caches, the thread pool's
    wake-ups and the other kernels differ (on ResNet-18, 8 kept tasks summed 3.5 % faster while the whole
    model measured 1-7 % slower at another thread count). This check makes "tuned never slower" a property
    of what `tune` writes, at the thread count it ran with. Boards (RPC runner) keep the per-task decisions."""
    if not report.kept:
        return
    if remote:
        report.whole_model = {"checked": False,
                              "note": "checked per task only: the whole-model check runs with the local runner"}
        write_summary(report)
        return
    tuned_mod, applied = apply_records(mod, target, report.out_dir)
    untuned_ms, tuned_ms = time_whole_model([mod, tuned_mod], target, rounds=rounds, repeat=repeat)
    keep = whole_model_keeps(untuned_ms, tuned_ms, min_speedup)
    report.whole_model = {"checked": True, "untuned_ms": untuned_ms, "tuned_ms": tuned_ms,
                          "speedup": untuned_ms / tuned_ms, "kept": keep, "rounds": rounds, "repeat": repeat,
                          "threads": os.environ.get("TVM_NUM_THREADS"), "applied": applied}
    if not keep:
        for t in report.kept:
            t.kept, t.note = False, "whole model not faster"
    write_summary(report)


def _progress_callback(bar: Any) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self, bar: Any) -> None:
            super().__init__()
            self.bar = bar

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            self.bar.update(len(measure_candidates))

    return Progress(bar)


def _budget(n_tasks: int, trials: int | None, per_task: int) -> list[int]:
    """Trials per task (heaviest first): at most per_task each, `trials` in all."""
    total = n_tasks * per_task if trials is None else trials
    out = []
    for i in range(n_tasks):
        share = min(per_task, total // (n_tasks - i)) if n_tasks - i else 0
        if share == 0 and total > 0:
            share = 1
        out.append(share)
        total -= share
    return out


# ----------------------------------------------------------------------------------------------
# tuning
# ----------------------------------------------------------------------------------------------

def tune_tasks(tasks: Sequence[Task], target: tvm.target.Target, out_dir: str | Path, *, source: str = "",
               trials: int | None = None, trials_per_task: int = 32, timeout: float = 120.0, number: int = 3,
               repeat: int = 5, rpc_tracker: str | None = None, rpc_key: str | None = None,
               cross_compiler: str | None = None, min_speedup: float = 1.02, seed: int | None = 0,
               progress: bool = True) -> TuneReport:
    """Tune `tasks` (see extract_tasks) into out_dir and measure default vs tuned for each."""
    from tqdm.auto import tqdm

    ms = _ms()
    from ..targets.presets import describe

    if trials_per_task < 1:
        raise IsquantError("--trials-per-task must be at least 1")
    if number < 1 or repeat < 1:
        raise IsquantError("--number and --repeat must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    described = describe(target)
    target = ms_target(target)
    start = time.perf_counter()
    check_board(rpc_tracker, rpc_key)
    _import_tensor_intrin()
    builder = make_builder(target, timeout, cross_compiler)
    runner = make_runner(timeout, number, repeat, rpc_tracker, rpc_key)
    database = ms.database.JSONDatabase(str(out / DB_WORKLOAD), str(out / DB_RECORDS), allow_missing=True)
    budget = _budget(len(tasks), trials, trials_per_task)
    results: list[TaskResult] = []
    bar = tqdm(total=sum(budget), desc="tune", unit="trial", disable=not progress or None)
    strategy = ms.search_strategy.EvolutionarySearch(population_size=128, init_min_unmeasured=16, genetic_num_iters=2)
    settings = {"trials": trials, "trials_per_task": trials_per_task, "timeout": timeout, "number": number,
                "repeat": repeat, "min_speedup": min_speedup, "threads": os.environ.get("TVM_NUM_THREADS"),
                "runner": f"rpc {rpc_tracker} key={rpc_key}" if rpc_tracker else "local"}

    def report() -> TuneReport:
        return TuneReport(out, described, source, results, time.perf_counter() - start, settings)

    try:
        for task, n_trials in zip(tasks, budget):
            if results:
                write_summary(report())  # a partial summary survives an interrupted run
            workload = tvm.IRModule({"main": task.workload})
            res = TaskResult(task.name, task.default_hash, shash(workload), task.macs, task.calls, task.intrin)
            results.append(res)
            bar.set_postfix_str(task.name)
            if n_trials == 0:
                res.note = "no trials left in --trials"
            else:
                # MetaSchedule re-creates its console handler on every call at its logger's current level, and
                # its dictConfig template fails on handlers it did not name (pytest's capture handlers): park them.
                ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
                ms_logger.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
                foreign = [h for h in ms_logger.handlers if not h.get_name()]
                for handler in foreign:
                    ms_logger.removeHandler(handler)
                try:
                    ms.tune_tir(workload, target, work_dir=str(out), max_trials_global=n_trials,
                                num_trials_per_iter=min(n_trials, 16), builder=builder, runner=runner,
                                database=database, space=space_for(task.intrin), strategy=strategy,
                                measure_callbacks=list(ms.measure_callback.MeasureCallback.create("default"))
                                + [_progress_callback(bar)], seed=seed, num_tuning_cores=os.cpu_count() or 1)
                    res.trials = n_trials
                except Exception as err:  # noqa: BLE001 - one failing task must not lose the others
                    res.note = f"tuning failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}"
                    log.warning("%s: %s", task.name, res.note)
                finally:
                    for handler in foreign:
                        ms_logger.addHandler(handler)
            tuned = best_schedule(database, task.workload, target)
            candidates = [task.default] + ([tuned] if tuned is not None else [])
            if rpc_tracker:
                timings = measure(candidates, target, builder, runner)
            else:
                timings = measure_local(candidates, target, number, repeat)
            res.default_ms = timings[0][0]
            if timings[0][1]:
                res.note = f"default {timings[0][1]}"
            if tuned is None:
                res.note = res.note or "no valid tuned schedule"
                continue
            res.tuned_hash = shash(tuned)
            res.tuned_ms, err = timings[1]
            if err:
                res.note = f"tuned {err}"
            elif res.default_ms is not None:
                res.kept, res.note = keep_decision(res.default_ms, res.tuned_ms, min_speedup)
    finally:
        bar.close()
    final = report()
    write_summary(final)
    return final


def best_schedule(database: Any, workload: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.tirx.PrimFunc | None:
    """The database's best schedule of `workload` as a drop-in kernel PrimFunc (None when there is none)."""
    mod = tvm.IRModule({"main": workload})
    if not database.has_workload(mod):
        return None
    sch = database.query_schedule(mod, target, workload_name="main")
    if sch is None:
        return None
    return _drop_in(sch.mod["main"])


def write_summary(report: TuneReport) -> Path:
    from ..util.fileio import atomic_write_json

    path = report.out_dir / SUMMARY
    atomic_write_json(path, report.to_json())
    return path


def read_summary(records: str | Path) -> dict[str, Any]:
    path = Path(records)
    summary = path / SUMMARY if path.is_dir() else path
    if not summary.is_file():
        raise IsquantError(f"{records}: no {SUMMARY} here; write tuning records with `python -m isquant_tvm tune"
                           " MODEL -o DIR`")
    doc = json.loads(summary.read_text())
    if doc.get("format") != SUMMARY_FORMAT:
        raise IsquantError(f"{summary}: unknown summary format {doc.get('format')!r}")
    return doc


def tune(model: Any, target: str | dict[str, Any] | tvm.target.Target = "x86", out_dir: str | Path = "records", *,
         trials: int | None = None, trials_per_task: int = 32, timeout: float = 120.0, number: int = 3,
         repeat: int = 5, rpc_tracker: str | None = None, rpc_key: str | None = None,
         cross_compiler: str | None = None, max_tasks: int | None = None, task_names: Sequence[str] | None = None,
         min_speedup: float = 1.02, input_shapes: Any = None, quantize: str = "isquant",
         quant_options: Mapping[str, Any] | None = None, seed: int | None = 0, progress: bool = True,
         num_threads: int | None = None) -> TuneReport:
    """Quantize `model` like `compile` does, then tune its int8 conv/dense kernels into `out_dir`.

    num_threads: the thread count candidates and the hand schedule are timed with (default: TVM_NUM_THREADS
    if set, else every core, like `run`). A schedule that wins on one core can lose on two (measured on
    ResNet-18), so tune with the thread count the library will run with; summary.json records it.

    trials: total trial budget (default trials_per_task x tasks); trials_per_task caps each task; the
    heaviest tasks (calls x MACs) come first. max_tasks / task_names restrict the tasks. number/repeat:
    runs averaged per measurement / measurements (default 3 / 5); timeout: builder and runner seconds."""
    from ..fold.fold_bn import prepare
    from ..frontend.loader import ImportedModel, load
    from ..pipeline import quantize_model
    from ..targets.presets import resolve_target
    from ..runtime.runner import set_thread_count

    if quantize not in ("isquant", "rtn"):
        raise IsquantError("tune works on the integer graph: --quantize must be isquant or rtn")
    if num_threads is not None and num_threads < 1:
        raise IsquantError("--num-threads must be at least 1")
    set_thread_count(num_threads)  # before anything starts TVM's pool, here or in the runner's workers
    tgt = resolve_target(target)
    check_board(rpc_tracker, rpc_key)
    imported = model if isinstance(model, ImportedModel) else load(model, input_shapes=input_shapes)
    float_mod = prepare(imported)
    options = {"rounding": "rtn" if quantize == "rtn" else "squant", "progress": False, **dict(quant_options or {})}
    with capture_kernels() as captured:
        qres = quantize_model(imported, float_mod, tgt, **options)
    tasks = extract_tasks(qres.mod, captured)
    if task_names:
        unknown = set(task_names) - {t.name for t in tasks}
        if unknown:
            raise IsquantError(f"no tunable task named {sorted(unknown)}; tasks: {[t.name for t in tasks]}")
        tasks = [t for t in tasks if t.name in set(task_names)]
    if max_tasks is not None:
        tasks = tasks[:max_tasks]
    if not tasks:
        kernels = sorted({gv.name_hint.rstrip("0123456789") for gv, f in qres.mod.functions_items()
                          if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith(("qconv2d", "qdense"))})
        hint = (f" (its kernels {', '.join(kernels)} have no tunable compute: only the VNNI/AVX2/generic conv"
                " and dense kernels are; an AMX host can tune its VNNI kernels with --target x86-avx512)"
                if kernels else "")
        raise IsquantError("the model has no int8 conv/dense kernel to tune for this target" + hint)
    report = tune_tasks(tasks, tgt, out_dir, source=imported.source, trials=trials, trials_per_task=trials_per_task,
                        timeout=timeout, number=number, repeat=repeat, rpc_tracker=rpc_tracker, rpc_key=rpc_key,
                        cross_compiler=cross_compiler, min_speedup=min_speedup, seed=seed, progress=progress)
    check_whole_model(report, qres.mod, tgt, min_speedup=min_speedup, remote=bool(rpc_tracker))
    report.quant_report = dict(qres.report or {})
    return report


# ----------------------------------------------------------------------------------------------
# applying records at compile time
# ----------------------------------------------------------------------------------------------

def load_kept(records: str | Path, target: tvm.target.Target) -> dict[str, tvm.tirx.PrimFunc]:
    """default-PrimFunc hash -> tuned PrimFunc, for the kept tasks of a records folder."""
    from ..targets.presets import describe

    doc = read_summary(records)
    folder = Path(records) if Path(records).is_dir() else Path(records).parent
    if doc.get("target") != describe(target):
        raise IsquantError(f"{records}: tuned for target {json.dumps(doc.get('target'))}, compiling for"
                           f" {json.dumps(describe(target))}; tune again for this target")
    kept = [TaskResult.from_json(t) for t in doc.get("tasks", []) if t.get("kept")]
    if not kept:
        return {}
    target = ms_target(target)
    ms = _ms()
    from ..kernels import arm_dot, x86_vnni  # noqa: F401 - register the tensor intrinsics the traces replay

    database = ms.database.JSONDatabase(str(folder / DB_WORKLOAD), str(folder / DB_RECORDS), allow_missing=False)
    workloads: dict[str, tvm.tirx.PrimFunc] = {}
    for rec in database.get_all_tuning_records():
        mod = rec.workload.mod
        workloads.setdefault(shash(mod), mod["main"])
    out: dict[str, tvm.tirx.PrimFunc] = {}
    for t in kept:
        workload = workloads.get(t.workload_hash)
        tuned = best_schedule(database, workload, target) if workload is not None else None
        if tuned is None or shash(tuned) != t.tuned_hash:
            log.warning("%s: the database no longer holds the measured schedule of %s; left untuned", records, t.name)
            continue
        out[t.default_hash] = tuned
    return out


def apply_records(mod: tvm.IRModule, target: tvm.target.Target, records: str | Path) -> tuple[tvm.IRModule, list[str]]:
    """Replace each kernel PrimFunc of `mod` that a kept task of `records` (a `tune -o` folder) tuned, i.e.
    whose tuned schedule measured faster than our hand schedule; returns the module and the names of the
    replaced functions."""
    kept = load_kept(records, target)
    applied: list[str] = []
    if not kept:
        return mod, applied
    updates = {}
    matched: set[str] = set()
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            key = shash(func)
            if key in kept:
                updates[gv] = kept[key]
                matched.add(key)
                applied.append(gv.name_hint)
    if updates:
        mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for gv, func in updates.items():
            mod.update_func(gv, func)
    log.info("tuning records %s: %d kept tasks, %d functions replaced (%s)", records, len(kept), len(applied),
             ", ".join(applied))
    if len(matched) < len(kept):
        log.warning("%s: %d kept tasks matched no function of this module (tuned for another model or"
                    " quantization?)", records, len(kept) - len(matched))
    return mod, sorted(applied)
