"""Generated inputs for the fuzz and fault suite: a tiny valid CNN and systematic ways to break it.

The base model is small on purpose (conv 3->8 3x3, ReLU, conv 8->8, global pool, Gemm 8->4 on 1x3x8x8) so
one compile takes about a second: the corpus is hundreds of cases on a shared 2-core machine.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

OPSET = 17


def tiny_model(opset: int = OPSET, seed: int = 0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, arr: np.ndarray):
        return numpy_helper.from_array(arr.astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3), init("b1", rng.standard_normal(8) * 0.1),
             init("w2", rng.standard_normal((8, 8, 3, 3)) * 0.2), init("b2", rng.standard_normal(8) * 0.1),
             init("w3", rng.standard_normal((4, 8)) * 0.3), init("b3", rng.standard_normal(4) * 0.1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="isquant-fuzz")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@dataclass
class Case:
    """One fuzz case: a CLI command line (paths relative to the work folder) and what counts as a pass."""

    name: str
    group: str
    argv: list[str]
    expect: str = "error"  # "error": must fail clearly; "any": exit 0 is fine too; "interrupt": see `signal`
    signal: int | None = None  # send this signal ...
    signal_after: str | float | None = None  # ... once this file pattern appears in the work folder, or after s
    protect: list[str] = field(default_factory=list)  # files that must stay byte-identical
    mode: str = "fork"  # "fork" (fast, from a warm parent) or "subprocess" (a fresh `python -m isquant_tvm`)
    timeout: float = 240.0


def _save(model, path):
    path.write_bytes(model.SerializeToString())
    return path.name


def _mutated(base, fn: Callable):
    model = copy.deepcopy(base)
    fn(model)
    return model


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _set_attr(model, node_name, attr, value):
    from onnx import helper

    node = _node(model, node_name)
    for a in list(node.attribute):
        if a.name == attr:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(attr, value))


def _init_array(model, name, fn):
    from onnx import numpy_helper

    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            arr = numpy_helper.to_array(init).copy()
            arr = fn(arr)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))


def _set_input_dims(model, dims, elem_type=None):
    inp = model.graph.input[0]
    if elem_type is not None:
        inp.type.tensor_type.elem_type = elem_type
    shape = inp.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        elif d is not None:
            dim.dim_value = d


def _replace_node(model, name, new):
    nodes = list(model.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n.name == name)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes[:idx] + list(new) + nodes[idx + 1:])


def model_cases(work, seed: int = 0) -> list[Case]:
    """>= 200 malformed (or oddly formed) models, each run through `inspect` or `compile`."""
    from onnx import TensorProto, helper

    rng = random.Random(seed)
    base = tiny_model()
    raw = base.SerializeToString()
    (work / "tiny.onnx").write_bytes(raw)
    cases: list[Case] = []

    def add(name, group, model_or_bytes, command="inspect", expect="error"):
        path = work / f"{name}.onnx"
        if isinstance(model_or_bytes, bytes):
            path.write_bytes(model_or_bytes)
        else:
            _save(model_or_bytes, path)
        argv = ["inspect", path.name] if command == "inspect" else ["compile", path.name, "-o", f"{name}.so"]
        cases.append(Case(name, group, argv, expect=expect))

    # truncations: 40 cut points, the first 8 compiled
    for i in range(40):
        cut = int(len(raw) * (i + 0.5) / 40)
        add(f"trunc{i:02d}", "truncation", raw[:cut], "compile" if i < 8 else "inspect")
    # byte flips: 50 files with 1..8 random bytes replaced; flips inside weights give valid models (exit 0 ok)
    for i in range(50):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        add(f"flip{i:02d}", "byte_flip", bytes(data), "compile" if i < 6 else "inspect", expect="any")
    # broken graphs
    broken = {
        "missing_input": lambda m: _node(m, "conv2").input.__setitem__(0, "nowhere"),
        "no_nodes": lambda m: m.graph.ClearField("node"),
        "no_outputs": lambda m: m.graph.ClearField("output"),
        "output_not_produced": lambda m: setattr(m.graph.output[0], "name", "ghost"),
        "removed_weight": lambda m: m.graph.initializer.pop(0),
        "conv_one_input": lambda m: _node(m, "conv1").input.__delitem__(slice(1, None)),
        "relu_two_inputs": lambda m: _node(m, "relu1").input.append("c1"),
        "reversed_order": lambda m: (lambda nodes: (m.graph.ClearField("node"), m.graph.node.extend(nodes[::-1])))(list(m.graph.node)),
        "duplicate_output": lambda m: _node(m, "relu2").output.__setitem__(0, "r1"),
        "cycle": lambda m: _node(m, "conv1").input.__setitem__(0, "r2"),
        "gemm_shape_mismatch": lambda m: _init_array(m, "w3", lambda a: np.zeros((4, 5), np.float32)),
        "conv_weight_rank2": lambda m: _init_array(m, "w2", lambda a: a.reshape(8, -1)),
        "conv_channels_mismatch": lambda m: _init_array(m, "w2", lambda a: np.zeros((8, 5, 3, 3), np.float32)),
        "bias_length": lambda m: _init_array(m, "b1", lambda a: np.zeros(3, np.float32)),
        "input_is_initializer_only": lambda m: m.graph.ClearField("input"),
        "empty_node_name_op": lambda m: setattr(_node(m, "relu1"), "op_type", ""),
        "second_graph_input_dynamic": lambda m: m.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None)),
        "weight_raw_data_short": lambda m: setattr(m.graph.initializer[0], "raw_data", m.graph.initializer[0].raw_data[:10]),
        "weight_dims_lie": lambda m: m.graph.initializer[0].dims.__setitem__(0, 16),
        "weight_string_type": lambda m: setattr(m.graph.initializer[2], "data_type", TensorProto.STRING),
        "flatten_axis_9": lambda m: _set_attr(m, "flatten", "axis", 9),
        "gemm_transB0": lambda m: _set_attr(m, "fc", "transB", 0),
        "pool_on_rank2": lambda m: _replace_node(m, "pool", [helper.make_node("Flatten", ["r2"], ["fl0"], name="fl0"),
                                                              helper.make_node("GlobalAveragePool", ["fl0"], ["p"], name="pool")]),
        "reshape_bad_shape": lambda m: _replace_node(m, "flatten", [helper.make_node("Reshape", ["p", "shp"], ["f"], name="reshape")]) or m.graph.initializer.append(helper.make_tensor("shp", TensorProto.INT64, [2], [3, 5])),
        "concat_mismatch": lambda m: _replace_node(m, "pool", [helper.make_node("Concat", ["r2", "input"], ["cc"], name="cat", axis=0),
                                                                helper.make_node("GlobalAveragePool", ["cc"], ["p"], name="pool")]),
        "add_broadcast_fail": lambda m: _replace_node(m, "relu2", [helper.make_node("Add", ["c2", "input"], ["r2"], name="badd")]),
    }
    for name, fn in broken.items():
        add(f"graph_{name}", "broken_graph", _mutated(base, fn), "compile" if name in ("cycle", "gemm_transB0") else "inspect")
    # declared dims
    dims = {
        "zero": [0, 3, 8, 8], "negative": [-1, 3, 8, 8], "huge_batch": [10**9, 3, 8, 8], "int64": [2**40, 3, 8, 8],
        "huge_spatial": [1, 3, 10**6, 10**6], "channels5": [1, 5, 8, 8], "rank3": [3, 8, 8], "rank5": [1, 3, 8, 8, 1],
        "rank0": [], "tiny1x1": [1, 3, 1, 1], "dynamic_all": [None, None, None, None], "dynamic_hw": [1, 3, "h", "w"],
        "dynamic_batch": ["n", 3, 8, 8], "spatial_2": [1, 3, 2, 2], "batch2": [2, 3, 8, 8], "huge_channels": [1, 2**31, 8, 8],
    }
    for name, d in dims.items():
        # a batch dim <= 0 reads as "dynamic": deployed at batch 1 (frontend._onnx_inputs)
        expect = "any" if name in ("zero", "negative", "tiny1x1", "dynamic_batch", "spatial_2", "batch2") else "error"
        add(f"dims_{name}", "bad_dims", _mutated(base, lambda m, d=d: _set_input_dims(m, d)),
            "compile" if name in ("huge_batch", "int64", "tiny1x1") else "inspect", expect=expect)
    # attributes that contradict the weights or the spec
    attrs = {
        "kernel5": ("conv1", "kernel_shape", [5, 5]), "kernel1d": ("conv1", "kernel_shape", [3]),
        "pads2": ("conv1", "pads", [1, 1]), "pads_neg": ("conv1", "pads", [-1, -1, -1, -1]),
        "pads_huge": ("conv1", "pads", [100, 100, 100, 100]), "strides0": ("conv1", "strides", [0, 0]),
        "strides_neg": ("conv2", "strides", [-1, 1]), "strides_huge": ("conv2", "strides", [100, 100]),
        "dilation0": ("conv1", "dilations", [0, 1]), "dilation_big": ("conv2", "dilations", [9, 9]),
        "group3": ("conv2", "group", 3), "group0": ("conv2", "group", 0), "group_neg": ("conv2", "group", -2),
        "group8_mismatch": ("conv2", "group", 8), "auto_pad_foo": ("conv1", "auto_pad", "FOO"),
        "auto_pad_same": ("conv1", "auto_pad", "SAME_UPPER"), "unknown_attr": ("conv1", "frobnicate", 3),
        "gemm_alpha_nan": ("fc", "alpha", float("nan")), "gemm_beta_inf": ("fc", "beta", float("inf")),
        "flatten_axis_neg9": ("flatten", "axis", -9), "kernel_string": ("conv1", "kernel_shape", "3x3"),
    }
    for name, (node, attr, value) in attrs.items():
        add(f"attr_{name}", "bad_attribute", _mutated(base, lambda m, a=(node, attr, value): _set_attr(m, *a)),
            "compile" if name in ("group3", "pads_huge", "gemm_alpha_nan") else "inspect",
            expect="any" if name in ("pads_huge", "auto_pad_same", "dilation_big", "strides_huge") else "error")
    # opsets and versions
    for version in (0, 1, 3, 6, 99, 1000, -1):
        m = copy.deepcopy(base)
        m.opset_import[0].version = version
        add(f"opset_{version}".replace("-", "m"), "bad_opset", m)
    for name, fn in {"no_opset_import": lambda m: m.ClearField("opset_import"), "ir_version_1": lambda m: setattr(m, "ir_version", 1),
                     "ir_version_99": lambda m: setattr(m, "ir_version", 99),
                     "ms_domain_node": lambda m: (setattr(_node(m, "relu1"), "domain", "com.microsoft"),
                                                  m.opset_import.append(helper.make_opsetid("com.microsoft", 1)))}.items():
        add(f"opset_{name}", "bad_opset", _mutated(base, fn))
    # unknown ops and ops that import but may not compile (exit 0 through a float fallback is fine for those)
    for op in ("FooBar", "NotAnOp", "Conv2D", "relu"):
        add(f"op_unknown_{op}", "unknown_op", _mutated(base, lambda m, op=op: setattr(_node(m, "relu1"), "op_type", op)))
    add("op_custom_domain", "unknown_op", _mutated(base, lambda m: (setattr(_node(m, "relu1"), "domain", "my.ops"),
                                                                     m.opset_import.append(helper.make_opsetid("my.ops", 1)))))
    fallback = {
        "LeakyRelu": lambda m: setattr(_node(m, "relu1"), "op_type", "LeakyRelu"),
        "Dropout": lambda m: setattr(_node(m, "relu1"), "op_type", "Dropout"),
        "Erf": lambda m: setattr(_node(m, "relu1"), "op_type", "Erf"),
        "LRN": lambda m: (setattr(_node(m, "relu1"), "op_type", "LRN"), _set_attr(m, "relu1", "size", 3)),
        "Gather_int64": lambda m: (_replace_node(m, "flatten", [helper.make_node("Flatten", ["p"], ["f0"], name="flatten", axis=1),
                                                                 helper.make_node("Gather", ["f0", "gidx"], ["f"], name="gather", axis=1)]),
                                   m.graph.initializer.append(helper.make_tensor("gidx", TensorProto.INT64, [8], list(range(8))))),
    }
    for op, fn in fallback.items():
        add(f"op_fallback_{op}", "fallback_op", _mutated(base, fn), "compile", expect="any")
    # NaN / Inf weights
    nonfinite = {
        "w1_nan": ("w1", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a)),
        "w1_all_nan": ("w1", lambda a: np.full_like(a, np.nan)), "b2_inf": ("b2", lambda a: np.full_like(a, np.inf)),
        "w3_neg_inf": ("w3", lambda a: np.where(a > 0, -np.inf, a)), "w2_inf_one": ("w2", lambda a: a.ravel().__setitem__(0, np.inf) or a),
        "b3_nan": ("b3", lambda a: a * np.nan), "w2_huge": ("w2", lambda a: a * 1e38), "w1_zero": ("w1", lambda a: a * 0),
        "w1_denormal": ("w1", lambda a: a * 1e-44),
    }
    for name, (init, fn) in nonfinite.items():
        add(f"weights_{name}", "nonfinite_weights", _mutated(base, lambda m, i=init, f=fn: _init_array(m, i, f)),
            "compile" if name in ("w1_nan", "b2_inf", "w2_huge", "w1_zero") else "inspect",
            expect="any" if name in ("w2_huge", "w1_zero", "w1_denormal") else "error")
    # graph input dtypes
    for name, code in {"bool": TensorProto.BOOL, "string": TensorProto.STRING, "int16": TensorProto.INT16,
                       "uint16": TensorProto.UINT16, "complex64": TensorProto.COMPLEX64, "bfloat16": TensorProto.BFLOAT16,
                       "undefined": TensorProto.UNDEFINED}.items():
        add(f"dtype_{name}", "input_dtype", _mutated(base, lambda m, c=code: _set_input_dims(m, [1, 3, 8, 8], c)))
    # hypothesis-style random attribute soup: seeded draws over conv attributes and dims
    for i in range(20):
        m = copy.deepcopy(base)
        _set_attr(m, "conv2", "pads", [rng.randint(-2, 4) for _ in range(rng.choice([2, 4, 4, 6]))])
        _set_attr(m, "conv2", "strides", [rng.randint(-1, 3) for _ in range(rng.choice([1, 2, 2]))])
        _set_input_dims(m, [rng.choice([1, 1, 2, 0]), rng.choice([3, 3, 4]), rng.choice([8, 1, 64, 0]), 8])
        add(f"random{i:02d}", "random_attributes", m, expect="any")
    return cases


def prepare_library(work, build: bool = True) -> None:
    """m.so + m.so.json of the tiny model (a real compile in a fresh process) and inputs for `run` cases.
    build=False (the fast sample in the test suite): m.so is a stand-in, a copy of one of Python's own
    extension modules (a real ELF shared object) with the tiny model's metadata, enough for every check
    that happens before TVM loads a library."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    if not (work / "tiny.onnx").exists():
        (work / "tiny.onnx").write_bytes(tiny_model().SerializeToString())
    if not (work / "m.so").exists() and build:
        subprocess.run([sys.executable, "-m", "isquant_tvm", "compile", "tiny.onnx", "-o", "m.so"], cwd=work,
                       check=True, capture_output=True, env={**os.environ, "ISQUANT_NO_SUPERVISOR": ""})
    elif not (work / "m.so").exists():
        import _json

        shutil.copyfile(_json.__file__, work / "m.so")
        (work / "m.so.json").write_text(json.dumps({
            "tool": "isquant-tvm", "source": "tiny.onnx", "target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
            "inputs": [{"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32"}], "quantization": None}))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(work / "good.npz", input=x)
    np.savez(work / "wrong_shape.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    np.savez(work / "wrong_dtype.npz", input=x.astype(np.complex64))
    np.savez(work / "float_to_int.npz", input=(x * 10).astype(np.float64))
    np.savez(work / "bool.npz", input=np.zeros((1, 3, 8, 8), bool))
    np.savez(work / "strings.npz", input=np.array([["a"] * 8] * 3))
    np.savez(work / "missing_key.npz", other=x)
    np.savez(work / "extra_key.npz", input=x, extra=x)
    np.savez(work / "nan.npz", input=np.where(x > 1, np.nan, x))
    np.savez(work / "inf.npz", input=np.where(x > 1, np.inf, x))
    np.save(work / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (work / "object.npz").write_bytes((work / "object.npy").read_bytes())
    (work / "text.npz").write_text("not an npz\n")
    so = (work / "m.so").read_bytes()
    meta = (work / "m.so.json").read_text()
    for i, frac in enumerate((0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)):
        lib = work / f"trunc{i}.so"
        lib.write_bytes(so[: int(len(so) * frac)])
        (work / f"trunc{i}.so.json").write_text(meta)
    (work / "rand.so").write_bytes(random.Random(1).randbytes(4096))
    (work / "rand.so.json").write_text(meta)
    (work / "text.so").write_text("#!/bin/sh\necho hi\n")
    (work / "text.so.json").write_text(meta)
    (work / "flipped.so").write_bytes(so[:16] + bytes([so[16] ^ 0xFF]) + so[17:])  # e_type damaged
    (work / "flipped.so.json").write_text(meta)
    import json

    doc = json.loads(meta)
    variants = {
        "badjson": "{ not json", "emptyjson": "", "listjson": "[1, 2]",
        "negshape": json.dumps({**doc, "inputs": [{**doc["inputs"][0], "shape": [-1, 3, 8, 8]}]}),
        "floaty": json.dumps({**doc, "inputs": [{**doc["inputs"][0], "dtype": "floaty"}]}),
        "noname": json.dumps({**doc, "inputs": [{"shape": [1, 3, 8, 8], "dtype": "float32"}]}),
        "wrongshape": json.dumps({**doc, "inputs": [{**doc["inputs"][0], "shape": [1, 3, 16, 16]}]}),
        "twoinputs": json.dumps({**doc, "inputs": doc["inputs"] * 2}),
        "aarch64": json.dumps({**doc, "target": {**doc["target"], "mtriple": "aarch64-linux-gnu"}}),
        "target_str": json.dumps({**doc, "target": "llvm"}),
    }
    for name, text in variants.items():
        (work / f"meta_{name}.so").write_bytes(so)
        (work / f"meta_{name}.so.json").write_text(text)
    (work / "nometa.so").write_bytes(so)
    (work / "adir").mkdir(exist_ok=True)
    (work / "afile").write_text("x")
    (work / "empty.onnx").write_bytes(b"")
    (work / "text.onnx").write_text("hello\n")
    (work / "garbage.pt2").write_bytes(b"PK\x03\x04garbage")
    if not (work / "fifo.onnx").exists():
        os.mkfifo(work / "fifo.onnx")


def argument_cases() -> list[Case]:
    """>= 50 bad flags, paths, inputs and libraries (needs prepare_library)."""
    cases: list[Case] = []

    def add(name, group, argv, expect="error", protect=()):
        cases.append(Case(name, group, argv, expect=expect, protect=list(protect)))

    for flag, values in {"--repeat": ["0", "-1", "x", "1.5"], "--number": ["0", "-3"], "--num-threads": ["-1", "0", "two"],
                         "--print-top": ["-1", "0"], "--session-timeout": ["0", "-5", "nan", "inf", "1e9", "abc"]}.items():
        for v in values:
            add(f"bench{flag}={v}", "bad_flag", ["bench", "m.so", flag, v])
    for flag, values in {"--weight-bits": ["1", "9", "x"], "--calibration-count": ["0", "-4"]}.items():
        for v in values:
            add(f"compile{flag}={v}", "bad_flag", ["compile", "tiny.onnx", "-o", "x.so", flag, v])
    for v in ("0", "-2"):
        add(f"tune--trials={v}", "bad_flag", ["tune", "tiny.onnx", "-o", "rec", "--trials", v])
    add("eval--limit=0", "bad_flag", ["eval", "tiny.onnx", "--data", "adir", "--limit", "0"])
    add("unknown_flag", "bad_flag", ["compile", "tiny.onnx", "-o", "x.so", "--frobnicate"])
    add("missing_output", "bad_flag", ["compile", "tiny.onnx"])
    add("bad_choice", "bad_flag", ["compile", "tiny.onnx", "-o", "x.so", "--quantize", "int4"])
    add("no_command", "bad_flag", [])
    add("unknown_command", "bad_flag", ["frobnicate"])
    for name, target in {"cuda_tag": "nvidia/geforce-rtx-3090", "metal_tag": "apple/m1-gpu", "cuda": "cuda",
                         "riscv": "llvm -mtriple=riscv64-linux-gnu", "bad_json": "{", "json_gpu": '{"kind": "cuda"}',
                         "nosuch": "nosuch", "empty": "", "missing_json_file": "nothere.json",
                         "arm32": "llvm -mtriple=armv7l-linux-gnueabihf"}.items():
        add(f"target_{name}", "bad_target", ["compile", "tiny.onnx", "-o", "x.so", "--target", target])
    paths = {
        "o_is_dir": ["compile", "tiny.onnx", "-o", "adir"], "o_dir_so": ["compile", "tiny.onnx", "-o", "adir/"],
        "o_parent_file": ["compile", "tiny.onnx", "-o", "afile/x.so"], "o_bad_suffix": ["compile", "tiny.onnx", "-o", "x.txt"],
        "o_proc": ["compile", "tiny.onnx", "-o", "/proc/isquant.so"], "o_devnull": ["quantize", "tiny.onnx", "-o", "/dev/null"],
        "report_is_output": ["compile", "tiny.onnx", "-o", "r.so", "--report", "r.so"],
        "report_is_metadata": ["compile", "tiny.onnx", "-o", "m.so", "--report", "m.so.json"],
        "report_is_model": ["compile", "tiny.onnx", "-o", "y.so", "--report", "tiny.onnx"],
        "o_is_model": ["quantize", "tiny.onnx", "-o", "tiny.onnx"],
        "bench_json_metadata": ["bench", "m.so", "--json", "m.so.json"], "bench_json_library": ["bench", "m.so", "--json", "m.so"],
        "run_outputs_inputs": ["run", "m.so", "--inputs", "good.npz", "--outputs", "good.npz"],
        "run_json_dir": ["run", "m.so", "--json", "adir"],
        "model_missing": ["inspect", "nothere.onnx"], "model_dir": ["inspect", "adir"], "model_fifo": ["inspect", "fifo.onnx"],
        "model_devnull": ["inspect", "/dev/null"], "model_empty": ["inspect", "empty.onnx"], "model_text": ["inspect", "text.onnx"],
        "model_pt2_garbage": ["inspect", "garbage.pt2"], "builtin_unknown": ["inspect", "builtin:nope"],
        "shapes_letters": ["inspect", "tiny.onnx", "--input-shapes", "input:[a]"],
        "shapes_unknown_name": ["inspect", "tiny.onnx", "--input-shapes", "nope:[1,3,8,8]"],
        "shapes_zero": ["inspect", "tiny.onnx", "--input-shapes", "input:[0,3,8,8]"],
        "shapes_huge": ["inspect", "tiny.onnx", "--input-shapes", "input:[1,3,99999999999,8]"],
        "shapes_mem": ["compile", "tiny.onnx", "-o", "x.so", "--input-shapes", "input:[100000,3,1024,1024]"],
        "calibration_missing": ["compile", "tiny.onnx", "-o", "x.so", "--calibration", "nothere"],
        "tuning_records_missing": ["compile", "tiny.onnx", "-o", "x.so", "--tuning-records", "nothere"],
        "eval_data_missing": ["eval", "tiny.onnx", "--data", "nothere"],
        "cross_compiler_missing": ["compile", "tiny.onnx", "-o", "x.so", "--target", "arm", "--cross-compiler", "nosuch-gcc"],
    }
    for name, argv in paths.items():
        add(f"path_{name}", "bad_path", argv, protect=["m.so", "m.so.json", "tiny.onnx", "good.npz"])
    for name in ("wrong_shape", "wrong_dtype", "bool", "strings", "missing_key", "extra_key", "object", "text"):
        add(f"inputs_{name}", "bad_input", ["run", "m.so", "--inputs", f"{name}.npz"])
    add("inputs_missing_file", "bad_input", ["run", "m.so", "--inputs", "nothere.npz"])
    add("inputs_nan_checked", "bad_input", ["run", "m.so", "--inputs", "nan.npz", "--check-finite"])
    add("inputs_inf_checked", "bad_input", ["run", "m.so", "--inputs", "inf.npz", "--check-finite"])
    add("inputs_nan_warned", "bad_input", ["run", "m.so", "--inputs", "nan.npz"], expect="any")
    add("inputs_float64", "bad_input", ["run", "m.so", "--inputs", "float_to_int.npz"], expect="any")
    for i in range(8):
        add(f"library_trunc{i}", "bad_library", ["run", f"trunc{i}.so"])
    for name in ("rand", "text", "flipped", "nometa"):
        add(f"library_{name}", "bad_library", ["run", f"{name}.so"])
    for name in ("badjson", "emptyjson", "listjson", "negshape", "floaty", "noname", "wrongshape", "twoinputs",
                 "aarch64", "target_str"):
        add(f"metadata_{name}", "bad_library", ["bench", f"meta_{name}.so", "--repeat", "2"])
    add("library_missing", "bad_library", ["run", "nothere.so"])
    add("library_dir", "bad_library", ["run", "adir"])
    add("library_fifo", "bad_library", ["run", "fifo.onnx"])
    return cases


def interrupt_cases() -> list[Case]:
    """SIGINT/SIGTERM at several points of compile and bench; a fresh process each (needs prepare_library)."""
    import signal as sig

    cases = []
    for signum in (sig.SIGINT, sig.SIGTERM):
        short = "int" if signum == sig.SIGINT else "term"
        for when in (0.3, 3.0):  # during start-up / import, and mid-pipeline
            cases.append(Case(f"compile_{short}_{when}s", "interrupt", ["compile", "tiny.onnx", "-o", "m.so", "--report", "rep.json"],
                              expect="interrupt", signal=signum, signal_after=when, protect=["m.so", "m.so.json"],
                              mode="subprocess"))
        cases.append(Case(f"compile_{short}_export", "interrupt", ["compile", "tiny.onnx", "-o", "m.so", "--report", "rep.json"],
                          expect="interrupt", signal=signum, signal_after=".m.so.", protect=["m.so", "m.so.json"],
                          mode="subprocess"))
        cases.append(Case(f"bench_{short}", "interrupt", ["bench", "m.so", "--repeat", "100000000", "--json", "b.json"],
                          expect="interrupt", signal=signum, signal_after="maps:m.so", protect=["m.so", "m.so.json"],
                          mode="subprocess"))
    cases.append(Case("bench_double_sigint", "interrupt", ["bench", "m.so", "--repeat", "100000000"], expect="interrupt",
                      signal=sig.SIGINT, signal_after="maps:m.so:twice", mode="subprocess"))
    return cases
