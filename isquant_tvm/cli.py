"""`python -m isquant_tvm`: a tvmc-style command line over the Python API (no logic of its own)."""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import IsquantError
from .util import lifecycle
from .util.fileio import Transaction, atomic_write_json, check_output_path, check_outputs
from .util.version import __version__

EPILOG = "Models: an .onnx file, a torch.export .pt2 file, or builtin:NAME (resnet18, resnet20-cifar, squeezenet1_1, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large, yolov8n, dbnet_mv3, mtcnn_pnet)."

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
MAX_SESSION_TIMEOUT = 86400.0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage stays in --help), exit code 2 like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ({what})") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low} ({what})")
        return value

    return parse


def _float_in(low: float, high: float, what: str, low_open: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
        if not np.isfinite(value) or value < low or (low_open and value == low) or value > high:
            bound = f"above {low:g}" if low_open else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what} must be {bound} and at most {high:g}")
        return value

    return parse


def _command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        _COMMANDS[name] = fn
        return fn

    return register


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model to import: path to .onnx or .pt2, or builtin:NAME")
    p.add_argument("--input-shapes", metavar="SHAPES",
                   help='override input shapes, tvmc style: "input:[1,3,224,224]" (space-separated for several);'
                        " default: the model's static shapes")


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="x86",
                   help="where the library runs: a preset (x86, x86-avx2, x86-avx512, x86-amx, arm, rasp4b, rasp5;"
                        " see `targets`), a TVM tag (raspberry-pi/4b-aarch64), a JSON dict"
                        " ('{\"kind\": \"llvm\", \"mcpu\": \"haswell\"}') or an old tvmc string"
                        " ('llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon'). Default: x86 (this CPU)")
    p.add_argument("--cross-compiler", metavar="CC",
                   help="C compiler that links the library for a foreign target (default for aarch64:"
                        " aarch64-linux-gnu-gcc from Debian's gcc-aarch64-linux-gnu)")


def _add_quant_args(p: argparse.ArgumentParser, default_quantize: str) -> None:
    g = p.add_argument_group("quantization")
    auto = default_quantize == "auto"  # only compile reads a model's own quantization (quantize/prequant.py)
    g.add_argument("--quantize", choices=(["auto"] if auto else []) + ["isquant", "rtn", "none"],
                   default=default_quantize,
                   help=("auto: the model's own quantization when it is a QDQ / QOperator ONNX model (its scales"
                         " and zero points, no range estimation), else isquant; " if auto else "")
                        + "isquant: SQuant flip rounding on int8 weights + integer graph; rtn: round-to-nearest"
                        f" weights + integer graph; none: float build (default: {default_quantize})")
    g.add_argument("--rounding", choices=["squant", "squant-e", "squant-k", "squant-c", "rtn"], default=None,
                   help="weight rounding stage(s) to use (default: squant for --quantize isquant, rtn for rtn)")
    g.add_argument("--granularity", choices=["per-tensor", "per-channel"], default="per-tensor",
                   help="weight scale granularity: one symmetric scale per tensor (ISQuant, default) or per output channel")
    g.add_argument("--weight-bits", type=_weight_bits, default=8, metavar="B",
                   help="weight bit width, 2..8 (default 8; the integer graph needs 8, lower widths are for research)")
    g.add_argument("--equalize", choices=["auto", "on", "off"], default="auto",
                   help="data-free cross-layer equalization + bias absorption and correction before the rounding"
                        " (DFQ): auto = per chain of layers, only where the measured weight + activation noise"
                        " goes down (default); on = every chain; off = none. The report says what ran")
    g.add_argument("--activation-ranges", choices=["auto", "bn", "synthetic", "calibration"], default="auto",
                   help="how activation scales are set: auto = BatchNorm statistics where the model had BN, synthetic"
                        " inputs elsewhere (data-free, default); calibration = from --calibration samples")
    g.add_argument("--calibration", metavar="PATH",
                   help="folder of images or .npz of preprocessed inputs for calibrated activation ranges (optional)")
    g.add_argument("--calibration-method", choices=["minmax", "percentile"], default="percentile",
                   help="how calibration samples set a range (default: percentile 99.99)")
    g.add_argument("--calibration-count", type=_int_at_least(1, "calibration samples"), default=64, metavar="N",
                   help="calibration samples to use: the first N images of a folder / arrays of an .npz, or N"
                        " evenly spaced images of a labelled set (default 64)")
    g.add_argument("--preprocess", choices=["auto", "resize-crop", "center-crop"], default="auto",
                   help="how image files (--calibration, --data folders) become the model input: resize-crop ="
                        " short side to 256, centre crop 224 (standard for full-size photos); center-crop = crop"
                        " only (pre-scaled images, e.g. 227x227); auto = per image, crop only when its short side"
                        " is within 1.25x of the input size (default)")
    g.add_argument("--report", metavar="PATH", help="write the per-layer quantization report (JSON) here")
    _add_float_nodes_arg(g)


def _add_float_nodes_arg(g: Any) -> None:
    g.add_argument("--float-nodes", nargs="+", default=[], metavar="NAME",
                   help="ONNX node names to keep float (like onnxruntime's nodes_to_exclude), e.g."
                        " --float-nodes /model.22/dfl/conv/Conv; listed in the report")


def _weight_bits(text: str) -> int:
    value = _int_at_least(2, "weight bits: 2..8")(text)
    if value > 8:
        raise argparse.ArgumentTypeError(f"{value} is above 8 (weight bits: 2..8)")
    return value


def _add_run_args(p: argparse.ArgumentParser, bench: bool = False) -> None:
    p.add_argument("library", help="a .so written by `compile`")
    p.add_argument("-i", "--inputs", metavar="NPZ", help=".npz of inputs keyed by input name (default: random)")
    p.add_argument("-o", "--outputs", metavar="NPZ", help="save outputs to this .npz (output_0, output_1, ...)")
    p.add_argument("--fill-mode", choices=["random", "zeros", "ones"], default="random",
                   help="how to make inputs when --inputs is not given (default random, seeded)")
    p.add_argument("--repeat", type=_int_at_least(1 if bench else 0, "timed measurements"), default=None, metavar="N",
                   help="timed measurements (each averages --number runs); default 0 for run, 20 for bench")
    p.add_argument("--number", type=_int_at_least(1, "runs per measurement"), default=1, metavar="M",
                   help="runs averaged per measurement (default 1)")
    p.add_argument("--num-threads", type=_int_at_least(1, "threads"), metavar="T",
                   help="TVM worker threads (default: all cores)")
    p.add_argument("--check-finite", action="store_true",
                   help="refuse inputs holding NaN or Inf (default: a warning; int8 quantization clips them to finite values)")
    p.add_argument("--print-time", action="store_true", help="print the timing table (implied by bench)")
    p.add_argument("--print-top", type=_int_at_least(1, "classes to print"), metavar="K", help="print the top-K classes of the first output")
    p.add_argument("--json", metavar="PATH", help="write timing and output summary as JSON")
    g = p.add_argument_group("remote board (TVM RPC)")
    g.add_argument("--rpc", metavar="HOST:PORT", help="run on an RPC server reached directly")
    g.add_argument("--rpc-tracker", metavar="HOST[:PORT]", help="run on a board from this tracker (port default 9190)")
    g.add_argument("--rpc-key", metavar="KEY", help="the board's key at the tracker (e.g. rasp4b)")
    g.add_argument("--session-timeout", type=_float_in(0.0, MAX_SESSION_TIMEOUT, "--session-timeout"), default=600.0,
                   metavar="S", help="seconds before the remote session is closed (default 600; above 0, at most"
                                     f" {MAX_SESSION_TIMEOUT:g})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m isquant_tvm",
        description="Data-free int8 deployment of CNNs with Apache TVM: ISQuant weight rounding, an integer"
                    " Relax graph, x86 and aarch64 shared libraries, local or RPC runs.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"isquant-tvm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more output: -v info and tracebacks on errors, -vv debug")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compile", help="import, quantize and build a model into a .so",
                       description="Import a model, fold BatchNorm, quantize it data-free to an integer graph and"
                                   " build a shared library (plus <output>.json metadata) for a target.",
                       epilog=EPILOG)
    _add_model_args(p)
    _add_target_args(p)
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="the .so to write (atomically)")
    _add_quant_args(p, default_quantize="auto")
    p.add_argument("--tuning-records", metavar="DIR",
                   help="a folder written by `tune` for this model and target: swap in the tuned kernels whose"
                        " schedule measured faster than the hand-written one (the others stay as they are)")
    p.add_argument("--print-ir", action="store_true", help="print the final Relax module before building")

    p = sub.add_parser("tune", help="MetaSchedule-tune the int8 conv/dense kernels into a records folder",
                       description="Quantize the model like `compile`, then tune each distinct int8 conv/dense kernel"
                                   " with MetaSchedule (AVX-512 VNNI targets: on the vpdpbusd intrinsic), time the"
                                   " hand schedule and the best tuned one with the same runner, and write the"
                                   " MetaSchedule database plus summary.json to --output. `compile --tuning-records"
                                   " DIR` then uses a tuned kernel only where it measured faster.",
                       epilog=EPILOG)
    _add_model_args(p)
    _add_target_args(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="records folder (created; an existing database there is extended)")
    _add_quant_args(p, default_quantize="isquant")
    g = p.add_argument_group("tuning budget and measurement")
    g.add_argument("--trials", type=_int_at_least(1, "trials"), metavar="N",
                   help="total trial budget over all tasks, heaviest (calls x MACs) first"
                        " (default: --trials-per-task x number of tasks)")
    g.add_argument("--trials-per-task", type=_int_at_least(1, "trials per task"), default=16, metavar="N",
                   help="at most N measured candidates per task (default 16; about 5-10 s each on 2 cores)")
    g.add_argument("--max-tasks", type=_int_at_least(1, "tasks"), metavar="K", help="tune only the K heaviest tasks")
    g.add_argument("--tasks", metavar="NAMES", help="tune only these kernels (comma-separated function names)")
    g.add_argument("--timeout", type=_float_in(0.0, MAX_SESSION_TIMEOUT, "--timeout"), default=120.0, metavar="S",
                   help="seconds allowed for one candidate's build and for one run (default 120)")
    g.add_argument("--number", type=_int_at_least(1, "runs per measurement"), default=3, metavar="M",
                   help="runs averaged per measurement (default 3)")
    g.add_argument("--repeat", type=_int_at_least(1, "measurements per candidate"), default=5, metavar="N",
                   help="measurements per candidate (default 5)")
    g.add_argument("--min-speedup", type=_float_in(0.0, 1000.0, "--min-speedup"), default=1.02, metavar="X",
                   help="keep a tuned kernel only if it measured at least X times faster than the hand"
                        " schedule (default 1.02: noise does not flip a tie); then the whole model is timed"
                        " with and without the kept kernels and they are dropped unless it is faster"
                        " (local runner; X < 1 keeps them regardless)")
    g.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    g.add_argument("--num-threads", type=_int_at_least(1, "threads"), metavar="T",
                   help="threads the kernels are timed with (default: TVM_NUM_THREADS, else all cores); tune with"
                        " the thread count the library will run with: a schedule that wins on 1 core can lose on 2")
    g = p.add_argument_group("remote board (TVM RPC)")
    g.add_argument("--rpc-tracker", metavar="HOST[:PORT]",
                   help="measure candidates on a board from this tracker (port default 9190)")
    g.add_argument("--rpc-key", metavar="KEY", help="the board's key at the tracker (e.g. rasp4b)")

    p = sub.add_parser("run", help="run a compiled .so locally or on a board",
                       description="Run a library built by `compile` once, optionally timed, like `tvmc run`.")
    _add_run_args(p)
    p = sub.add_parser("bench", help="time a compiled .so (run with --repeat 20 --print-time)",
                       description="Benchmark a library: median/mean/min/max/std over --repeat measurements.")
    _add_run_args(p, bench=True)

    p = sub.add_parser("inspect", help="op counts and IR of the imported graph",
                       description="Import a model, fold BatchNorm and print its op counts (and the Relax IR).",
                       epilog=EPILOG)
    _add_model_args(p)
    p.add_argument("--print-ir", action="store_true", help="print the Relax module")
    p.add_argument("--no-fold", action="store_true", help="show the graph as imported, before BatchNorm folding")

    p = sub.add_parser("quantize", help="write an ONNX QDQ model of the ISQuant int8 graph (for other runtimes)",
                       description="Quantize the model exactly as `compile` does (BatchNorm folding, equalization,"
                                   " ISQuant/SQuant rounding, activation ranges) and write that integer graph as ONNX"
                                   " QDQ: int8 weights, int32 biases and QuantizeLinear/DequantizeLinear on the"
                                   " activations. onnxruntime runs it, and `compile` of the file gives the same"
                                   " integer graph as compiling the float model. --activations float writes the"
                                   " older weight-only file instead (int8 weights + DequantizeLinear, float"
                                   " activations; any --weight-bits).",
                       epilog=EPILOG)
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="the .onnx to write (atomically)")
    p.add_argument("--activations", choices=["auto", "int8", "float"], default="auto",
                   help="int8: the full QDQ model of compile's integer graph (fails, naming the op, where an integer"
                        " op has no QDQ form: lookup-table activations, float regions...); float: weight-only QDQ;"
                        " auto: int8, else weight-only with the reason printed (default; weight-only for"
                        " --weight-bits < 8)")
    p.add_argument("--rounding", choices=["squant", "squant-e", "squant-k", "squant-c", "rtn"], default="squant",
                   help="weight rounding: squant (SQuant E+K+C flips, default), a single stage, or rtn")
    p.add_argument("--granularity", choices=["per-tensor", "per-channel"], default="per-tensor",
                   help="one symmetric scale per tensor (ISQuant, default) or per output channel")
    p.add_argument("--weight-bits", type=_weight_bits, default=8, metavar="B", help="weight bit width 2..8 (default 8)")
    p.add_argument("--equalize", choices=["auto", "on", "off"], default="auto",
                   help="cross-layer equalization, as for compile (int8 activations only; default auto)")
    p.add_argument("--activation-ranges", choices=["auto", "bn", "synthetic", "calibration"], default="auto",
                   help="how activation scales are set, as for compile (int8 activations only; default auto)")
    p.add_argument("--calibration", metavar="PATH", help="calibration images / .npz, as for compile")
    p.add_argument("--calibration-method", choices=["minmax", "percentile"], default="percentile",
                   help="as for compile (default: percentile 99.99)")
    p.add_argument("--calibration-count", type=_int_at_least(1, "calibration samples"), default=64, metavar="N",
                   help="calibration samples to use (default 64)")
    p.add_argument("--report", metavar="PATH", help="write the export report (JSON) here")
    _add_float_nodes_arg(p)

    p = sub.add_parser("eval", help="accuracy of the int8 build vs the float model on labelled images",
                       description="Compile the model to int8 (x86) and run it beside the float model on labelled"
                                   " images: top-1/top-5 of both, drop, agreement, logit cosine, per-layer SQNR.",
                       epilog=EPILOG)
    _add_model_args(p)
    p.add_argument("--data", required=True, metavar="DIR_OR_NPZ",
                   help="ImageNet-style folder (images/ + labels.txt, center crop) or CIFAR-style .npz (images, labels)")
    p.add_argument("--limit", type=_int_at_least(1, "images"), metavar="N", help="evaluate N evenly spaced images (default: all)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PNG", help="write a per-layer SQNR bar chart (default: beside --json)")
    _add_quant_args(p, default_quantize="isquant")

    sub.add_parser("targets", help="list target presets and what each enables",
                   description="List the --target presets, the TVM target each maps to and the ISA features it enables.")
    return parser


def _quant_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"granularity": args.granularity, "weight_bits": args.weight_bits,
                               "activation_ranges": args.activation_ranges, "calibration": args.calibration,
                               "calibration_method": args.calibration_method,
                               "calibration_count": args.calibration_count,
                               "preprocess": getattr(args, "preprocess", "auto"),
                               "equalize": getattr(args, "equalize", "auto")}
    if getattr(args, "float_nodes", None):
        options["float_nodes"] = list(args.float_nodes)
    if args.rounding:
        options["rounding"] = args.rounding
    elif getattr(args, "quantize", "isquant") == "rtn":
        options["rounding"] = "rtn"
    return options


def _model_input(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The command's input files, which no output may replace."""
    model = getattr(args, "model", None)
    found = [("MODEL", model if model and not str(model).startswith("builtin:") else None)]
    for flag in ("calibration", "tuning_records", "inputs", "data"):
        if getattr(args, flag, None):
            found.append((f"--{flag.replace('_', '-')}", getattr(args, flag)))
    if getattr(args, "library", None):
        found += [("LIBRARY", args.library), ("LIBRARY's metadata", args.library + ".json")]
    return found


@_command("quantize")
def _cmd_quantize(args: argparse.Namespace) -> int:
    check_outputs([("-o", args.output), ("--report", args.report)], _model_input(args))
    from .api import load
    from .tools.qdq import export_qdq
    from .tools.qdq_full import QdqUnsupported, export_qdq_full

    model = load(args.model, input_shapes=args.input_shapes)
    activations = args.activations
    if activations == "int8" and args.weight_bits != 8:
        raise IsquantError("--activations int8 writes compile's integer graph, which runs 8-bit weights:"
                           " use --weight-bits 8, or --activations float for a weight-only file")
    if activations == "auto":
        activations = "int8" if args.weight_bits == 8 else "float"
    with Transaction() as txn:
        report = None
        if activations == "int8":
            options = {"rounding": args.rounding, "granularity": args.granularity,
                       "activation_ranges": args.activation_ranges, "calibration": args.calibration,
                       "calibration_method": args.calibration_method, "calibration_count": args.calibration_count,
                       "equalize": args.equalize, "float_nodes": list(args.float_nodes or [])}
            try:
                report = export_qdq_full(model, args.output, options, transaction=txn)
            except QdqUnsupported as err:
                if args.activations == "int8":
                    raise
                print(f"note: writing a weight-only QDQ model (float activations): {err}", file=sys.stderr)
        if report is None:
            report = export_qdq(model.onnx_model, args.output, rounding=args.rounding, granularity=args.granularity,
                                weight_bits=args.weight_bits, source=model.source, transaction=txn,
                                float_nodes=args.float_nodes)
        if args.report:
            txn.write_json(Path(args.report), report)
    summary = report.get("summary", {})
    print(f"wrote {args.output} ({report['format']}): "
          + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list))))
    return 0


@_command("eval")
def _cmd_eval(args: argparse.Namespace) -> int:
    plot = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    check_outputs([("--json", args.json), ("--plot", plot), ("--report", args.report)], _model_input(args))
    from .api import load
    from .tools.evaluate import evaluate, plot_sqnr

    model = load(args.model, input_shapes=args.input_shapes)
    result = evaluate(model, args.data, limit=args.limit, quant_options=_quant_options(args))
    print(f"model {result['model']} on {result['images']} images of {result['data']}")
    print(f"{'':10}{'top-1':>9}{'top-5':>9}")
    print(f"{'fp32':10}{result['fp32_top1']:9.2f}{result['fp32_top5']:9.2f}")
    print(f"{'int8':10}{result['int8_top1']:9.2f}{result['int8_top5']:9.2f}")
    print(f"top-1 drop {result['top1_drop']:.2f} pt, agreement {result['top1_agreement']:.2f} %, "
          f"logit cosine mean {result['logit_cosine_mean']:.5f}")
    _print_range_hint(result.get("quantization", {}))
    rows = result.get("layers_sqnr", [])
    if rows:
        worst = min(rows, key=lambda r: r["sqnr_db"])
        print(f"per-layer SQNR: {len(rows)} tensors, min {worst['sqnr_db']:.1f} dB ({worst['tensor']})")
    with Transaction() as txn:
        if args.json:
            txn.write_json(Path(args.json), result)
        if plot and rows:
            plot_sqnr(rows, plot, f"{Path(result['model']).name}: per-layer SQNR (int8 vs fp32)", transaction=txn)
    if plot and rows:
        print(f"wrote {plot}")
    return 0


@_command("targets")
def _cmd_targets(args: argparse.Namespace) -> int:
    from .targets.presets import presets

    rows = presets()
    width = max(len(n) for n in rows)
    for name, preset in rows.items():
        spec = preset.spec if isinstance(preset.spec, str) else json.dumps(preset.spec)
        print(f"{name:<{width}}  {preset.description}")
        print(f"{'':<{width}}  enables: {', '.join(preset.enables)}; TVM target: {spec}")
    return 0


@_command("inspect")
def _cmd_inspect(args: argparse.Namespace) -> int:
    from .api import inspect, load

    model = load(args.model, input_shapes=args.input_shapes)
    counts, mod = inspect(model, folded=not args.no_fold)
    print(f"model: {model.source}")
    for spec in model.inputs:
        print(f"input: {spec.name} {list(spec.shape)} {spec.dtype}")
    print("ops:")
    for name, count in counts.items():
        print(f"  {name:<24}{count:>6}")
    if args.print_ir:
        print(mod.script(show_meta=False))
    return 0


@_command("compile")
def _cmd_compile(args: argparse.Namespace) -> int:
    if Path(args.output).suffix not in (".so", ".tar"):
        raise IsquantError(f"-o {args.output}: the output must end in .so (shared library) or .tar")
    meta = Path(args.output + ".json")  # build.export.metadata_path, without importing TVM first
    check_outputs([("-o", args.output), (f"-o's metadata ({meta.name})", meta), ("--report", args.report)],
                  _model_input(args))
    from .api import compile

    quant_options = _quant_options(args)
    with Transaction() as txn:  # the .so, its .json and --report appear together, or none of them
        result = compile(args.model, target=args.target, output=args.output, quantize=args.quantize,
                         cross_compiler=args.cross_compiler, input_shapes=args.input_shapes,
                         quant_options=quant_options if args.quantize != "none" else None,
                         tuning_records=args.tuning_records, transaction=txn)
        if args.report and result.report:
            txn.write_json(Path(args.report), result.report)
    if args.print_ir:
        print(result.mod.script(show_meta=False))
    summary = result.report.get("summary") if result.report else None
    if summary:
        print(summary_line(summary))
        _print_range_hint(summary)
    tuning = result.metadata.get("tuning")
    if tuning is not None:
        applied = tuning["applied"]
        print(f"tuning records {tuning['records']}: {len(applied)} tuned kernels used"
              + (f" ({', '.join(applied)})" if applied else ""))
    print(f"wrote {result.output} ({result.output.stat().st_size / 1e6:.1f} MB) and {result.output}.json")
    return 0


@_command("tune")
def _cmd_tune(args: argparse.Namespace) -> int:
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise IsquantError(f"-o {args.output}: exists and is not a folder; `tune` writes a records folder")
    check_output_path(Path(args.output) / "summary.json", "-o")
    check_outputs([("--report", args.report)], _model_input(args) + [("-o", str(Path(args.output) / "summary.json"))])
    from .api import tune

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    report = tune(args.model, target=args.target, out_dir=args.output, quantize=args.quantize,
                  input_shapes=args.input_shapes, quant_options=_quant_options(args), trials=args.trials,
                  trials_per_task=args.trials_per_task, timeout=args.timeout, number=args.number,
                  repeat=args.repeat, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                  cross_compiler=args.cross_compiler, max_tasks=args.max_tasks, task_names=tasks,
                  min_speedup=args.min_speedup, seed=args.seed, num_threads=args.num_threads)
    if args.report and report.quant_report:
        atomic_write_json(Path(args.report), report.quant_report)
    print(report.table())
    print(f"wrote {report.out_dir}/summary.json and the MetaSchedule database; use it with"
          f" `compile --tuning-records {report.out_dir}`")
    return 0


def _print_range_hint(summary: dict[str, Any]) -> None:
    from .ranges.datafree import hint

    line = hint(summary)
    if line:
        print(line)


def summary_line(summary: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in summary.items()]
    return "quantized: " + ", ".join(parts)


@_command("run")
def _cmd_run(args: argparse.Namespace, bench: bool = False) -> int:
    check_outputs([("--outputs", args.outputs), ("--json", args.json)], _model_input(args))
    from . import api

    repeat = args.repeat if args.repeat is not None else (20 if bench else 0)
    if args.rpc or args.rpc_tracker:
        outputs, timing, info = api.run_remote(args.library, args.inputs or None, rpc=args.rpc,
                                               rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, repeat=repeat,
                                               number=args.number, fill_mode=args.fill_mode,
                                               session_timeout=args.session_timeout, quiet=not args.verbose,
                                               check_finite=args.check_finite)
        for key in ("mean_ms", "median_ms", "min_ms", "max_ms", "std_ms", "repeat", "number"):
            info.pop(key, None)  # the timing fields come from `timing` below, as for a local run
    else:
        outputs, timing = api.run(args.library, args.inputs or None, repeat=repeat, number=args.number,
                                  fill_mode=args.fill_mode, num_threads=args.num_threads,
                                  check_finite=args.check_finite)
        info = {"device": "local cpu", "threads": int(os.environ.get("TVM_NUM_THREADS", "0")) or None}
    for i, out in enumerate(outputs):
        print(f"output_{i}: shape {list(out.shape)} {out.dtype}  min {out.min():.4g}  max {out.max():.4g}"
              f"  mean {out.mean():.4g}")
    if args.print_top and outputs:
        flat = outputs[0].reshape(outputs[0].shape[0], -1)[0]
        top = np.argsort(-flat, kind="stable")[: args.print_top]
        print("top classes: " + ", ".join(f"{c} ({flat[c]:.3f})" for c in top))
    if timing and (args.print_time or bench):
        where = info.get("device", "")
        if info.get("threads"):
            where += f", {info['threads']} thread{'s' if info['threads'] > 1 else ''}"
        print(f"{where}: " + timing.table() if where else timing.table())
    with Transaction() as txn:
        if args.outputs:
            buf = io.BytesIO()
            np.savez(buf, **{f"output_{i}": o for i, o in enumerate(outputs)})
            txn.write_bytes(Path(args.outputs), buf.getvalue())
        if args.json:
            doc: dict[str, Any] = dict(info)
            if timing:
                doc.update(timing.to_json())
            doc["outputs"] = [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs]
            txn.write_json(Path(args.json), doc)
    return 0


@_command("bench")
def _cmd_bench(args: argparse.Namespace) -> int:
    return _cmd_run(args, bench=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The error boundary: a user's mistake is one line and exit 2; Ctrl-C 130, SIGTERM 143; -v tracebacks."""
    lifecycle.install()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except IsquantError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, lifecycle.Terminated) as err:  # raised by lifecycle's handlers
        lifecycle.interrupted_message()
        return lifecycle.exit_code(err)
    except BrokenPipeError:  # `... | head`: the reader left; not an error worth a message
        sys.stdout = open(os.devnull, "w")
        return 0
    except MemoryError:
        if args.verbose:
            traceback.print_exc()
        print("error: out of memory: the model's tensors do not fit in this machine's RAM (check the declared input"
              " shapes, --input-shapes)", file=sys.stderr)
        return 2
    except Exception as err:  # an internal failure: keep it to one line unless asked
        if args.verbose:
            traceback.print_exc()
        first = str(err).strip().splitlines()
        print(f"error: internal error ({type(err).__name__}: {first[-1][:300] if first else ''}); please report it"
              + ("" if args.verbose else " (run with -v for the traceback)"), file=sys.stderr)
        return 1


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def cli_entry() -> int:
    """`python -m isquant_tvm` and the `isquant-tvm` script: `main` in a worker under the supervisor
    (util/lifecycle.py), so Ctrl-C and SIGTERM always end the command cleanly."""
    return lifecycle.supervise(main)
