"""The Python API; the CLI is a thin layer over these functions.

Pipeline: load (frontend) -> fold BN -> [quantize: weights, activation ranges, qnn pass, legalize]
-> build -> export -> run."""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tvm
from tqdm.auto import tqdm

from .util.version import __version__ as _version
from .util import tvm_compat
from .errors import IsquantError
from .frontend.loader import ImportedModel
from .frontend.loader import load as _load
from .fold import fold_bn
from .build import export as _export
from .build.build import build
from .targets.presets import describe, resolve_target
from .reference.interpreter import UnsupportedOp
from .runtime.runner import Timing, VMRunner, load_local, read_inputs
from .runtime.runner import check_finite as _check_finite
from .util.fileio import Transaction

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("auto", "isquant", "rtn", "none")


@dataclass
class CompileResult:
    mod: tvm.IRModule
    target: tvm.target.Target
    executable: Any
    metadata: dict[str, Any]
    output: Path | None = None
    report: dict[str, Any] = field(default_factory=dict)
    quantized: Any = None  # quantize.QuantizedModel when --quantize is not none

    def runner(self) -> VMRunner:
        """Run the in-memory build on the local CPU (x86 targets only)."""
        return VMRunner(self.executable, tvm.cpu(0), self.metadata)


def load(model: str | Path | Any, input_shapes: Mapping[str, Sequence[int]] | str | None = None,
         example_inputs: Sequence[Any] | None = None) -> ImportedModel:
    """Import an ONNX file, a .pt2 program, 'builtin:NAME' or a torch.nn.Module (with example_inputs)."""
    return _load(model, input_shapes=input_shapes, example_inputs=example_inputs)


def prepare(model: ImportedModel) -> tvm.IRModule:
    """The float graph every later stage starts from: BatchNorm folded, constants evaluated."""
    return fold_bn.prepare(model)


def compile(  # noqa: A001 - mirrors `isquant_tvm compile`
    model: ImportedModel | str | Path | Any,
    target: str | dict[str, Any] | tvm.target.Target = "x86",
    output: str | Path | None = None,
    quantize: str = "auto",
    cross_compiler: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | str | None = None,
    quant_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    tuning_records: str | Path | None = None,
    transaction: Transaction | None = None,
) -> CompileResult:
    """Import (if needed), fold BN, optionally quantize to an integer graph, build for `target` and,
    with `output`, export a .so plus `<output>.json`.

    tuning_records: a folder written by `tune` (or its summary.json); the kernels whose tuned schedule
    measured faster than the hand schedule are swapped in (see tuning/tune.py).
    transaction: a util.fileio.Transaction to stage the .so + .json in (the caller commits it with its other
    outputs); by default they are committed here."""
    if quantize not in QUANTIZE_MODES:
        raise IsquantError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    tgt = resolve_target(target)
    if output is not None:
        # Fail on a missing cross compiler before minutes of work, not after.
        _export.resolve_cross_compiler(tgt, cross_compiler)
    stages = ["import", "fold batchnorm", "quantize", "build", "export"]
    bar = tqdm(total=len(stages), desc="compile", unit="stage", disable=not progress or None, leave=False)
    try:
        bar.set_postfix_str("import")
        imported = model if isinstance(model, ImportedModel) else load(model, input_shapes=input_shapes)
        bar.update()
        bar.set_postfix_str("fold batchnorm")
        mod = prepare(imported)
        bar.update()
        report: dict[str, Any] = {}
        quant_meta: dict[str, Any] | None = None
        qres = None
        if quantize == "auto" and imported.prequantized:
            # the model's own quantization (quantize/prequant.py): no weight rounding, no activation ranges
            bar.set_postfix_str("quantize (model's own)")
            from .pipeline import quantize_prequantized

            qres = quantize_prequantized(imported, tgt)
            mod, report, quant_meta = qres.mod, qres.report, qres.metadata
        elif quantize != "none":
            bar.set_postfix_str("quantize")
            from .pipeline import quantize_model

            options = {"rounding": "rtn" if quantize == "rtn" else "squant", "progress": progress,
                       **dict(quant_options or {})}
            try:
                qres = quantize_model(imported, mod, tgt, **options)
            except UnsupportedOp as err:
                raise IsquantError(f"{imported.source}: {err}, so this op cannot be quantized yet; build the model"
                                   " in float with --quantize none") from None
            mod, report, quant_meta = qres.mod, qres.report, qres.metadata
            if quantize == "auto":  # the report says which quantization `auto` chose
                report["summary"]["quantization"] = "isquant"
        bar.update()
        bar.set_postfix_str("build")
        tuning: dict[str, Any] | None = None
        if tuning_records is not None:
            if quantize == "none":
                raise IsquantError("--tuning-records applies to the int8 kernels: it needs --quantize isquant or rtn")
            from .tuning.tune import apply_records

            mod, applied = apply_records(mod, tgt, tuning_records)
            tuning = {"records": str(tuning_records), "applied": applied}
        executable = build(mod, tgt)
        bar.update()
        metadata = {
            "tool": "isquant-tvm",
            "tool_version": _version,
            "tvm_version": tvm_compat.TVM_VERSION,
            "source": imported.source,
            "target": describe(tgt),
            "host": platform.machine(),
            "inputs": [i.to_json() for i in imported.inputs],
            "quantization": quant_meta,
        }
        if tuning is not None:
            metadata["tuning"] = tuning
        result = CompileResult(mod=mod, target=tgt, executable=executable, metadata=metadata, report=report,
                               quantized=qres)
        if output is not None:
            bar.set_postfix_str("export")
            result.output = _export.export_library(executable, output, tgt, metadata, cross_compiler,
                                                   transaction=transaction)
        bar.update()
    finally:
        bar.close()
    return result


def tune(
    model: ImportedModel | str | Path | Any,
    target: str | dict[str, Any] | tvm.target.Target = "x86",
    out_dir: str | Path = "records",
    quantize: str = "isquant",
    input_shapes: Mapping[str, Sequence[int]] | str | None = None,
    quant_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Any:
    """MetaSchedule-tune the model's int8 conv/dense kernels into `out_dir` (MetaSchedule JSON database +
    summary.json); returns a tuning.tune.TuneReport. options: trials, trials_per_task, timeout, number,
    repeat, rpc_tracker, rpc_key, cross_compiler, max_tasks, task_names, min_speedup, seed, progress, num_threads.
    Use the records with compile(..., tuning_records=out_dir)."""
    from .tuning.tune import tune as _tune

    return _tune(model, target, out_dir, quantize=quantize, input_shapes=input_shapes, quant_options=quant_options,
                 **options)


def run(library: str | Path | CompileResult, inputs: Mapping[str, np.ndarray] | str | Path | None = None,
        repeat: int = 0, number: int = 1, fill_mode: str = "random",
        num_threads: int | None = None, check_finite: bool = False) -> tuple[list[np.ndarray], Timing | None]:
    """Run `library` locally once and, with repeat > 0, time it (median/mean/min/max/std ms).

    inputs: arrays by input name, an .npz path, or None to fill them from the metadata JSON (fill_mode
    random / zeros / ones). NaN/Inf inputs print a warning, or with check_finite raise an InputError."""
    runner = library.runner() if isinstance(library, CompileResult) else load_local(library, num_threads)
    feed = read_inputs(inputs, runner, fill_mode)
    _check_finite(feed, strict=check_finite, source=str(inputs) if isinstance(inputs, (str, Path)) else None)
    outputs = runner.run(feed)
    timing = runner.benchmark(feed, repeat=repeat, number=number) if repeat > 0 else None
    return outputs, timing


def run_remote(library: str | Path, inputs: Mapping[str, np.ndarray] | str | Path | None = None,
               rpc: str | None = None, rpc_tracker: str | None = None, rpc_key: str | None = None,
               repeat: int = 0, number: int = 1, fill_mode: str = "random", session_timeout: float = 600.0,
               quiet: bool = True, check_finite: bool = False
               ) -> tuple[list[np.ndarray], Timing | None, dict[str, Any]]:
    """`run` on a board: an RPC server reached directly (rpc="HOST:PORT") or a board of a tracker
    (rpc_tracker="HOST[:9190]", rpc_key="rasp4b"). Returns the outputs, the timing (repeat > 0) and what
    the session reported about the board (device, threads, versions; median_ms when timed). quiet=False
    prints the connection steps to stderr (the CLI's default)."""
    from .runtime.rpc import run_remote as _run_remote

    return _run_remote(library, inputs, rpc=rpc, tracker=rpc_tracker, key=rpc_key, repeat=repeat, number=number,
                       session_timeout=session_timeout, fill_mode=fill_mode, quiet=quiet, check_finite=check_finite)


def inspect(model: ImportedModel | str | Path | Any, input_shapes: Mapping[str, Sequence[int]] | str | None = None,
            folded: bool = True) -> tuple[dict[str, int], tvm.IRModule]:
    """Op counts of the imported (and BN-folded) graph, and the module itself."""
    imported = model if isinstance(model, ImportedModel) else load(model, input_shapes=input_shapes)
    mod = prepare(imported) if folded else imported.mod
    return op_counts(mod), mod


def op_counts(mod: tvm.IRModule) -> dict[str, int]:
    from tvm import relax

    counts: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call):
            if isinstance(expr.op, tvm.ir.Op):
                name = expr.op.name.removeprefix("relax.")
            elif isinstance(expr.op, tvm.ir.GlobalVar):
                func = mod[expr.op]
                name = str(func.attrs["qnn.op"]) if func.attrs and "qnn.op" in func.attrs else expr.op.name_hint
            else:
                return
            counts[name] = counts.get(name, 0) + 1

    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and not (func.attrs and "qnn.op" in func.attrs):
            relax.analysis.post_order_visit(func, visit)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
