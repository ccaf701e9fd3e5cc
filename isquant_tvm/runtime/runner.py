"""Run and time an exported library on the local CPU (the RPC runner shares the timing code)."""
from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..util import tvm_compat
from ..errors import InputError, IsquantError, LibraryError
from ..build.export import read_metadata
from .libcheck import check_library

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Per-inference latency statistics over `repeat` measurements (each the mean of `number` runs)."""

    mean_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    repeat: int
    number: int

    @classmethod
    def from_seconds(cls, results: Sequence[float], number: int) -> "Timing":
        ms = np.asarray(results, dtype=np.float64) * 1e3
        return cls(float(ms.mean()), float(np.median(ms)), float(ms.min()), float(ms.max()), float(ms.std()),
                   len(ms), number)

    def table(self) -> str:
        head = f"{'mean (ms)':>12}{'median (ms)':>14}{'max (ms)':>12}{'min (ms)':>12}{'std (ms)':>12}"
        row = f"{self.mean_ms:12.3f}{self.median_ms:14.3f}{self.max_ms:12.3f}{self.min_ms:12.3f}{self.std_ms:12.3f}"
        return f"Execution time summary:\n{head}\n{row}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def order_inputs(meta_inputs: Sequence[Mapping[str, Any]], inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Inputs in the library's parameter order, checked against the metadata's shapes and dtypes."""
    if not meta_inputs:
        return list(inputs.values())
    missing = [m["name"] for m in meta_inputs if m["name"] not in inputs]
    if missing:
        raise InputError(f"inputs file lacks {missing}; the model expects {_describe(meta_inputs)}")
    extra = sorted(set(inputs) - {m["name"] for m in meta_inputs})
    if extra:
        raise InputError(f"inputs file has {extra}, which are not model inputs; the model expects {_describe(meta_inputs)}")
    ordered = []
    for m in meta_inputs:
        arr = np.asarray(inputs[m["name"]])
        given = f"{list(arr.shape)} {arr.dtype}"
        if tuple(arr.shape) != tuple(m["shape"]):
            raise InputError(f"input {m['name']!r} is {given}, the model expects {list(m['shape'])} {m['dtype']}")
        # same_kind: float64 -> float32 and int -> float are fine, float -> int8 or object/str/bool arrays are not
        if arr.dtype.kind not in "fiu" or not np.can_cast(arr.dtype, m["dtype"], casting="same_kind"):
            raise InputError(f"input {m['name']!r} is {given}, the model expects {list(m['shape'])} {m['dtype']}")
        ordered.append(np.ascontiguousarray(arr.astype(m["dtype"], copy=False)))
    return ordered


def _describe(meta_inputs: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{m['name']!r} {list(m['shape'])} {m['dtype']}" for m in meta_inputs)


def check_finite(inputs: Mapping[str, np.ndarray], strict: bool = False, source: str | None = None) -> None:
    """NaN/Inf inputs quantize to finite int8 values and give plausible-looking logits (the review saw exit 0);
    say so: a warning on stderr, or an InputError with --check-finite."""
    for name, arr in inputs.items():
        arr = np.asarray(arr)
        if arr.dtype.kind != "f":
            continue
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            where = f" in {source}" if source else ""
            msg = f"input {name!r}{where} holds {bad} NaN/Inf values of {arr.size}"
            if strict:
                raise InputError(f"{msg}; --check-finite refuses them: clean the inputs")
            print(f"warning: {msg}; the int8 model clips them, its outputs mean little (--check-finite refuses"
                  " such inputs)", file=sys.stderr)


def fill_inputs(meta_inputs: Sequence[Mapping[str, Any]], fill_mode: str = "random", seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for m in meta_inputs:
        shape, dtype = tuple(m["shape"]), m["dtype"]
        if fill_mode == "zeros":
            out[m["name"]] = np.zeros(shape, dtype)
        elif fill_mode == "ones":
            out[m["name"]] = np.ones(shape, dtype)
        else:
            out[m["name"]] = rng.standard_normal(shape).astype(dtype)
    return out


class VMRunner:
    """A relax.VirtualMachine over a loaded library on some device (local, or remote through RPC)."""

    def __init__(self, lib: Any, device: Any, metadata: Mapping[str, Any] | None = None, source: str = "") -> None:
        self.device = device
        self.source = source
        self.metadata = dict(metadata or {})
        if _device_type(device) == 1:  # local CPU (kDLCPU; RPC devices carry a session mask)
            _amx_permission(self.metadata)
        self.vm = tvm_compat.virtual_machine(lib, device)

    @property
    def input_specs(self) -> list[dict[str, Any]]:
        return list(self.metadata.get("inputs", []))

    def _device_args(self, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        return [tvm_compat.tensor(a, self.device) for a in order_inputs(self.input_specs, inputs)]

    def run_unchecked(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run without translating the VM's errors: a remote runner needs the board's own failure
        (a crashed server, SIGILL) to reach its explanation, not an input-mismatch message."""
        return _flatten_outputs(self.vm["main"](*self._device_args(inputs)), getattr(self, "remote", None))

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = self._device_args(inputs)
        try:
            out = self.vm["main"](*args)
        except Exception:  # noqa: BLE001 - the VM checks arity/shape/dtype with its own messages
            log.debug("the VM refused the inputs", exc_info=True)
            where = f"{self.source}: " if self.source else ""
            raise LibraryError(f"{where}the library does not take the inputs its .so.json describes"
                               f" ({_describe(self.input_specs)}); the .so.json belongs to another build: rebuild"
                               " both with `compile`") from None
        return _flatten_outputs(out)

    def benchmark(self, inputs: Mapping[str, np.ndarray], repeat: int = 10, number: int = 1,
                  warmup: int = 1) -> Timing:
        if repeat < 1 or number < 1:
            raise IsquantError("--repeat and --number must be at least 1")
        args = self._device_args(inputs)
        for _ in range(warmup):
            self.vm["main"](*args)
        # One measurement per call: TVM's evaluator runs all `repeat` in C, where a Ctrl-C is only seen when
        # it returns (the review waited 170 s); between calls the signal handler runs at once.
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=1)
        results: list[float] = []
        for _ in range(repeat):
            results.extend(timer(*args).results)
        return Timing.from_seconds(results, number)


def _device_type(device: Any) -> Any:
    try:
        return int(device.dlpack_device_type())  # tvm 0.27 Device
    except Exception:  # noqa: BLE001 - older Device objects / stand-ins
        return getattr(device, "device_type", None)


def _amx_permission(metadata: Mapping[str, Any]) -> None:
    """Linux needs a per-process permission before the first AMX tile instruction (else SIGILL). The AMX
    kernels also ask for it themselves; this is the early, clearly worded check. A refusal only matters
    when the library was built for an AMX target."""
    from ..util.cpu import host_has_amx, request_amx_permission, target_uses_amx

    built_for_amx = target_uses_amx(metadata.get("target") or {})
    if host_has_amx():
        try:
            request_amx_permission()
        except IsquantError:
            if built_for_amx:
                raise
    elif built_for_amx:
        raise IsquantError("this library was built for AMX int8 tiles (target x86-amx, or x86 on an AMX CPU) and "
                           "this CPU has none: rebuild it with --target x86 on this machine, or x86-avx512 / x86-avx2")


def _flatten_outputs(out: Any, remote: Any = None) -> list[np.ndarray]:
    """The VM's result as a flat list of arrays (nested tuples in order); `remote` is the RPC session whose VM
    returned it, for the tuples that come back as remote references."""
    if hasattr(out, "numpy"):
        return [out.numpy()]
    items = tvm_compat.remote_items(remote, out)
    result: list[np.ndarray] = []
    for item in out if items is None else items:
        result.extend(_flatten_outputs(item, remote))
    return result


def set_thread_count(num_threads: int | None = None) -> None:
    """Set TVM_NUM_THREADS, which TVM reads when a process's thread pool starts: `num_threads`, else keep the
    user's TVM_NUM_THREADS, else every core. TVM alone sizes its pool to half the logical CPUs on x86 (it
    assumes SMT): 1 thread on a 2-vCPU machine, where the documented default is all of them."""
    if num_threads or (num_threads is None and "TVM_NUM_THREADS" not in os.environ):
        os.environ["TVM_NUM_THREADS"] = str(num_threads or os.cpu_count() or 1)


def load_local(library: str | Path, num_threads: int | None = None) -> VMRunner:
    import tvm

    path = Path(library)
    if not path.exists():
        raise IsquantError(f"{path}: no such library (build one with `python -m isquant_tvm compile`)")
    machine = check_library(path)
    metadata = read_metadata(path)
    triple = str((metadata.get("target") or {}).get("mtriple", ""))
    if (triple and not triple.startswith(platform.machine())) or machine != platform.machine():
        built = triple or machine
        raise LibraryError(f"{path}: built for {built}, this machine is {platform.machine()}; run it on the board"
                           " with --rpc HOST:PORT or --rpc-tracker HOST:PORT --rpc-key KEY")
    set_thread_count(num_threads)
    try:
        lib = tvm_compat.load_module(str(path))
    except Exception as err:
        raise IsquantError(f"{path}: cannot load as a TVM library on this machine ({str(err).strip().splitlines()[-1]});"
                           " an aarch64 library runs on the board: use --rpc or --rpc-tracker") from err
    return VMRunner(lib, tvm.cpu(0), metadata, source=str(path))


def read_inputs(inputs: Mapping[str, np.ndarray] | str | Path | None, runner: Any,
                fill_mode: str = "random") -> dict[str, np.ndarray]:
    """The feed of a run: arrays by name, an .npz path, or (None) inputs filled from the runner's metadata."""
    if inputs is None:
        if not runner.input_specs:
            raise IsquantError("the library has no metadata JSON beside it: pass --inputs x.npz")
        return fill_inputs(runner.input_specs, fill_mode)
    if isinstance(inputs, (str, Path)):
        path = Path(inputs)
        if not path.exists():
            raise IsquantError(f"{path}: no such inputs file (an .npz keyed by input name)")
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except Exception as err:
            raise IsquantError(f"{path}: not a readable .npz file ({err})") from err
    return dict(inputs)
