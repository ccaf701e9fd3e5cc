"""Built-in example CNNs, built directly as ONNX graphs (numpy + onnx only, no download, no torch).

The architectures are the real ones (torchvision ResNet-18, SqueezeNet 1.1 and MobileNetV2, and He et al.'s
CIFAR ResNet-20 with option-A shortcuts); only the weights are synthetic.  Weights are drawn from a seeded
generator (one independent stream per tensor, keyed by the tensor's name, so they do not depend on build
order).  BatchNormalization nodes are kept in the graph with non-trivial parameters (gamma ~ U(0.5, 1.5),
beta ~ N(0, 0.1), running mean ~ N(0, 0.1), running var ~ U(0.5, 1.5)), so BN folding and BN-derived
activation ranges are exercised.

Because those running statistics are random rather than measured, plain He init would let the positive mean
of every ReLU output grow layer after layer (ResNet-18 logits reach std ~50).  So convolutions start from
He/Kaiming-normal draws (gain 2 after a ReLU, 1 otherwise), each dense filter tap is made orthogonal to the
channel means of its input (what a trained net's BN mean subtraction would do), and one scalar per layer
brings the conv output to unit second moment; both are measured by running a seeded, normalised random image
through a numpy forward pass while the graph is built.  Conv outputs are then roughly N(0, 1), consistent
with the BN running statistics, activations stay O(1) everywhere (rms 0.5-2.4) and logits have std ~0.3-1.6.

Names follow the PyTorch modules they mirror: node ``layer1.0.conv1`` has initializer
``layer1.0.conv1.weight``, BN node ``layer1.0.bn1`` has ``layer1.0.bn1.{weight,bias,running_mean,running_var}``
(the torch ``state_dict`` keys).  Each node's output tensor carries the node's name; the graph input is
``input`` (float32 NCHW) and the output ``logits``.

    >>> from isquant_tvm.frontend.zoo import builtin_onnx, parse_builtin
    >>> model = builtin_onnx(parse_builtin("builtin:resnet18"))
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "BUILTIN_PREFIX",
    "BUILTIN_MODELS",
    "CLASSIC_MODELS",
    "ModelInfo",
    "builtin_onnx",
    "is_builtin",
    "parse_builtin",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

BUILTIN_PREFIX = "builtin:"
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; keeps the files loadable by older runtimes

# Both the ImageNet models and akamaster's CIFAR ResNets normalise with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class ModelInfo:
    """What a built-in model expects and produces."""

    name: str
    input_shape: tuple[int, int, int]  # C, H, W (the batch is chosen at build time)
    num_classes: int
    description: str
    preprocessing: str  # "imagenet" | "cifar": RGB /255, then mean/std below
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def input_nchw(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, *self.input_shape)


# --------------------------------------------------------------------------------------------------------
# numpy reference ops (used on the probe input while building)
# --------------------------------------------------------------------------------------------------------


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    """NCHW conv2d (no bias) for dense (groups == 1) or depthwise (groups == C) weights."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    ho = (h + 2 * pad - k) // stride + 1
    wo = (wd + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x

    def tap(i: int, j: int) -> np.ndarray:
        return xp[:, :, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride]

    if groups == 1:
        cols = np.empty((c, k, k, n, ho, wo), dtype=np.float32)  # im2col, one tap at a time
        for i in range(k):
            for j in range(k):
                cols[:, i, j] = tap(i, j).transpose(1, 0, 2, 3)
        y = w.reshape(o, -1) @ cols.reshape(c * k * k, -1)
        return np.ascontiguousarray(y.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))
    y = np.zeros((n, c, ho, wo), dtype=np.float32)
    for i in range(k):
        for j in range(k):
            y += tap(i, j) * w[None, :, 0, i, j, None, None]
    return y


def _np_maxpool(x: np.ndarray, k: int, stride: int, pad: int, ceil_mode: bool) -> np.ndarray:
    n, c, h, w = x.shape

    def out_size(size: int) -> int:
        span = size + 2 * pad - k
        o = (-(-span // stride) if ceil_mode else span // stride) + 1
        if ceil_mode and (o - 1) * stride >= size + pad:  # the last window must start inside the input
            o -= 1
        return o

    ho, wo = out_size(h), out_size(w)
    extra_h = max(0, (ho - 1) * stride + k - h - 2 * pad)
    extra_w = max(0, (wo - 1) * stride + k - w - 2 * pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad + extra_h), (pad, pad + extra_w)), constant_values=-np.inf)
    y = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            np.maximum(y, xp[:, :, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride], out=y)
    return y


# --------------------------------------------------------------------------------------------------------
# Graph builder
# --------------------------------------------------------------------------------------------------------


class _GraphBuilder:
    """Accumulates nodes and initializers; every layer helper returns the name of its output tensor.

    Alongside the graph, the builder runs a numpy forward pass of a probe input (a seeded standard-normal
    image, i.e. a normalised random image) through every layer as it is added.  Convolution weights use that
    to stay well scaled: He-normal draws, then (for dense convs) each filter tap is made orthogonal to the
    per-channel means of its input, so a ReLU's positive mean is not amplified layer after layer (in a trained
    net the BN running mean removes it; here the running means are random), and finally one scalar per layer
    brings the conv output to unit second moment.  The probe logits also give an independent numpy reference
    of the graph's semantics.
    """

    def __init__(self, seed: int, probe: np.ndarray):
        self.seed = int(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._node_names: set[str] = set()
        self.v: dict[str, np.ndarray] = {"input": probe.astype(np.float32)}
        self.conv_rescale: dict[str, float] = {}  # conv name -> factor applied on top of He-normal

    # -- tensors -------------------------------------------------------------------------------------
    def rng(self, tensor_name: str) -> np.random.Generator:
        """An independent, reproducible stream per tensor (independent of build order)."""
        return np.random.default_rng([self.seed, zlib.crc32(tensor_name.encode())])

    def initializer(self, name: str, array: np.ndarray) -> str:
        if name in self.initializers:
            raise ValueError(f"duplicate initializer {name!r}")
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        """A shared constant initializer (created once, reused by name)."""
        if name not in self.initializers:
            self.initializer(name, array)
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, output: str | None, value: np.ndarray,
             **attrs) -> str:
        if name in self._node_names:
            raise ValueError(f"duplicate node name {name!r}")
        self._node_names.add(name)
        out = output or name
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        self.v[out] = np.asarray(value, dtype=np.float32)
        return out

    # -- layers --------------------------------------------------------------------------------------
    def conv(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bias: bool = False,
        gain: float = 2.0,
        demean: bool = True,
        output: str | None = None,
    ) -> str:
        """Conv2d, He-normal weights (std = sqrt(gain / fan_in); gain 2 after a ReLU, 1 otherwise),
        de-meaned against the input's channel means (dense convs, unless ``demean`` is off) and rescaled
        to a unit second moment on the probe."""
        if groups not in (1, cin) or cin % groups or cout % groups:
            raise ValueError(f"{name}: only dense or depthwise convs are supported")
        fan_in = (cin // groups) * k * k
        w = self.rng(f"{name}.weight").standard_normal((cout, cin // groups, k, k), dtype=np.float32)
        w *= np.float32(np.sqrt(gain / fan_in))
        xv = self.v[x]
        if groups == 1 and demean:
            mu = xv.mean(axis=(0, 2, 3), dtype=np.float64)
            mm = float(mu @ mu)
            if mm > 1e-12:
                # per output channel and tap: w[o, :, i, j] -= (w[o, :, i, j] . mu) mu / |mu|^2
                proj = np.einsum("ocij,c->oij", w, mu.astype(np.float32))
                w -= proj[:, None] * (mu / mm).astype(np.float32)[None, :, None, None]
        y = _np_conv(xv, w, stride, pad, groups)
        m2 = float(np.mean(np.square(y, dtype=np.float64)))
        scale = 1.0 / np.sqrt(m2) if m2 > 0 else 1.0
        self.conv_rescale[name] = scale
        w *= np.float32(scale)
        y *= np.float32(scale)
        inputs = [x, self.initializer(f"{name}.weight", w)]
        if bias:
            b = 0.01 * self.rng(f"{name}.bias").standard_normal(cout, dtype=np.float32)
            inputs.append(self.initializer(f"{name}.bias", b))
            y = y + b[None, :, None, None]
        return self.node(
            "Conv", inputs, name, output, y,
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, dilations=[1, 1], group=groups,
        )

    def bn(self, x: str, name: str, c: int, output: str | None = None) -> str:
        gamma = self.rng(f"{name}.weight").uniform(0.5, 1.5, c).astype(np.float32)
        beta = (0.1 * self.rng(f"{name}.bias").standard_normal(c)).astype(np.float32)
        mean = (0.1 * self.rng(f"{name}.running_mean").standard_normal(c)).astype(np.float32)
        var = self.rng(f"{name}.running_var").uniform(0.5, 1.5, c).astype(np.float32)
        eps = 1e-5
        scale = gamma / np.sqrt(var + np.float32(eps))
        y = (self.v[x] - mean[None, :, None, None]) * scale[None, :, None, None] + beta[None, :, None, None]
        inputs = [
            x,
            self.initializer(f"{name}.weight", gamma),
            self.initializer(f"{name}.bias", beta),
            self.initializer(f"{name}.running_mean", mean),
            self.initializer(f"{name}.running_var", var),
        ]
        return self.node("BatchNormalization", inputs, name, output, y, epsilon=eps, momentum=0.9)

    def relu(self, x: str, name: str, output: str | None = None) -> str:
        return self.node("Relu", [x], name, output, np.maximum(self.v[x], 0))

    def relu6(self, x: str, name: str, output: str | None = None) -> str:
        lo = self.constant("relu6.min", np.array(0.0, dtype=np.float32))
        hi = self.constant("relu6.max", np.array(6.0, dtype=np.float32))
        return self.node("Clip", [x, lo, hi], name, output, np.clip(self.v[x], 0, 6))

    def conv_bn(self, x: str, conv: str, bn: str, cin: int, cout: int, k: int, stride: int = 1,
                pad: int | None = None, groups: int = 1, gain: float = 2.0) -> str:
        pad = k // 2 if pad is None else pad
        y = self.conv(x, conv, cin, cout, k, stride, pad, groups, bias=False, gain=gain)
        return self.bn(y, bn, cout)

    def conv_bn_relu(self, x: str, conv: str, bn: str, relu: str, cin: int, cout: int, k: int,
                     stride: int = 1, pad: int | None = None, groups: int = 1, gain: float = 2.0,
                     relu6: bool = False) -> str:
        y = self.conv_bn(x, conv, bn, cin, cout, k, stride, pad, groups, gain)
        return self.relu6(y, relu) if relu6 else self.relu(y, relu)

    def maxpool(self, x: str, name: str, k: int, stride: int, pad: int = 0, ceil_mode: bool = False) -> str:
        y = _np_maxpool(self.v[x], k, stride, pad, ceil_mode)
        return self.node("MaxPool", [x], name, None, y, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, ceil_mode=int(ceil_mode))

    def gap(self, x: str, name: str) -> str:
        return self.node("GlobalAveragePool", [x], name, None, self.v[x].mean(axis=(2, 3), keepdims=True))

    def flatten(self, x: str, name: str, output: str | None = None) -> str:
        xv = self.v[x]
        return self.node("Flatten", [x], name, output, xv.reshape(xv.shape[0], -1), axis=1)

    def gemm(self, x: str, name: str, cin: int, cout: int, output: str | None = None) -> str:
        """torch.nn.Linear as Gemm(transB=1); LeCun-normal weights (std 1/sqrt(fan_in)), small bias."""
        w = self.rng(f"{name}.weight").standard_normal((cout, cin), dtype=np.float32)
        w *= np.float32(1.0 / np.sqrt(cin))
        b = 0.01 * self.rng(f"{name}.bias").standard_normal(cout, dtype=np.float32)
        y = self.v[x] @ w.T + b
        inputs = [x, self.initializer(f"{name}.weight", w), self.initializer(f"{name}.bias", b)]
        return self.node("Gemm", inputs, name, output, y, alpha=1.0, beta=1.0, transB=1)

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name, None, self.v[a] + self.v[b])

    def concat(self, xs: Sequence[str], name: str, axis: int = 1) -> str:
        return self.node("Concat", xs, name, None, np.concatenate([self.v[x] for x in xs], axis=axis), axis=axis)

    def subsample2(self, x: str, name: str) -> str:
        """x[:, :, ::2, ::2] as Slice with steps."""
        starts = self.initializer(f"{name}.starts", np.array([0, 0], dtype=np.int64))
        ends = self.initializer(f"{name}.ends", np.array([_INT64_MAX, _INT64_MAX], dtype=np.int64))
        axes = self.initializer(f"{name}.axes", np.array([2, 3], dtype=np.int64))
        steps = self.initializer(f"{name}.steps", np.array([2, 2], dtype=np.int64))
        return self.node("Slice", [x, starts, ends, axes, steps], name, None, self.v[x][:, :, ::2, ::2])

    def pad_channels(self, x: str, name: str, before: int, after: int) -> str:
        """Zero-pad the channel axis of an NCHW tensor."""
        pads = self.initializer(f"{name}.pads", np.array([0, before, 0, 0, 0, after, 0, 0], dtype=np.int64))
        y = np.pad(self.v[x], ((0, 0), (before, after), (0, 0), (0, 0)))
        return self.node("Pad", [x, pads], name, None, y, mode="constant")

    # -- model ---------------------------------------------------------------------------------------
    def build(self, graph_name: str, input_shape: Sequence[int | str], output: str | Sequence[str],
              num_classes: int, batch: int | str, metadata: dict[str, str]) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))
        outputs = [output] if isinstance(output, str) else list(output)
        # a classifier's "logits" is [N, classes]; other heads (zoo_modern) take their shape from the probe
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT,
                                              [batch, num_classes] if o == "logits" else
                                              [batch, *self.v[o].shape[1:]]) for o in outputs]
        graph = helper.make_graph(self.nodes, graph_name, [inp], outs, list(self.initializers.values()))
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="isquant_tvm.zoo",
            ir_version=IR_VERSION,
        )
        model.doc_string = metadata.get("description", "")
        helper.set_model_props(model, metadata)
        # value_info for every intermediate, from the probe's shapes with the batch dimension substituted
        # (cheaper than onnx.shape_inference on a 47 MB model; the tests cross-check it against onnx's)
        for node in self.nodes:
            for out_name in node.output:
                if out_name not in outputs:
                    shape = [batch, *self.v[out_name].shape[1:]]
                    model.graph.value_info.append(
                        helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape))
        onnx.checker.check_model(model)
        return model


# --------------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------------


def _resnet18(g: _GraphBuilder) -> str:
    """torchvision resnet18: BasicBlock x [2, 2, 2, 2], 1x1/2 conv + BN downsample."""
    x = g.conv_bn_relu("input", "conv1", "bn1", "relu", 3, 64, 7, stride=2, pad=3, gain=1.0)
    x = g.maxpool(x, "maxpool", 3, 2, pad=1)
    cin = 64
    for stage, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for i in range(2):
            s = stride if i == 0 else 1
            p = f"layer{stage}.{i}"
            y = g.conv_bn_relu(x, f"{p}.conv1", f"{p}.bn1", f"{p}.relu1", cin, planes, 3, s)
            y = g.conv_bn(y, f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
            if s != 1 or cin != planes:
                x = g.conv_bn(x, f"{p}.downsample.0", f"{p}.downsample.1", cin, planes, 1, s, pad=0)
            x = g.relu(g.add(y, x, f"{p}.add"), f"{p}.relu2")
            cin = planes
    x = g.flatten(g.gap(x, "avgpool"), "flatten")
    return g.gemm(x, "fc", 512, 1000, output="logits")


def _cifar_resnet(g: _GraphBuilder, depth: int = 20, num_classes: int = 10) -> str:
    """He et al. CIFAR ResNet (akamaster's pytorch_resnet_cifar10 naming), option-A shortcuts."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    x = g.conv_bn_relu("input", "conv1", "bn1", "relu", 3, 16, 3, gain=1.0)
    cin = 16
    for stage, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        for i in range(n):
            s = stride if i == 0 else 1
            p = f"layer{stage}.{i}"
            y = g.conv_bn_relu(x, f"{p}.conv1", f"{p}.bn1", f"{p}.relu1", cin, planes, 3, s)
            y = g.conv_bn(y, f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
            if s != 1 or cin != planes:
                # option A: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
                sc = g.subsample2(x, f"{p}.shortcut.slice")
                x = g.pad_channels(sc, f"{p}.shortcut.pad", planes // 4, planes // 4)
            x = g.relu(g.add(y, x, f"{p}.add"), f"{p}.relu2")
            cin = planes
    x = g.flatten(g.gap(x, "avgpool"), "flatten")
    return g.gemm(x, "linear", 64, num_classes, output="logits")


def _squeezenet1_1(g: _GraphBuilder) -> str:
    """torchvision squeezenet1_1 (no BN, biased convs, ceil-mode max pools)."""

    def fire(x: str, idx: int, cin: int, squeeze: int, e1: int, e3: int) -> str:
        p = f"features.{idx}"
        s = g.relu(g.conv(x, f"{p}.squeeze", cin, squeeze, 1, bias=True), f"{p}.squeeze_activation")
        a = g.relu(g.conv(s, f"{p}.expand1x1", squeeze, e1, 1, bias=True), f"{p}.expand1x1_activation")
        b = g.relu(g.conv(s, f"{p}.expand3x3", squeeze, e3, 3, pad=1, bias=True), f"{p}.expand3x3_activation")
        return g.concat([a, b], f"{p}.concat")

    x = g.relu(g.conv("input", "features.0", 3, 64, 3, stride=2, bias=True, gain=1.0), "features.1")
    x = g.maxpool(x, "features.2", 3, 2, ceil_mode=True)
    x = fire(x, 3, 64, 16, 64, 64)
    x = fire(x, 4, 128, 16, 64, 64)
    x = g.maxpool(x, "features.5", 3, 2, ceil_mode=True)
    x = fire(x, 6, 128, 32, 128, 128)
    x = fire(x, 7, 256, 32, 128, 128)
    x = g.maxpool(x, "features.8", 3, 2, ceil_mode=True)
    x = fire(x, 9, 256, 48, 192, 192)
    x = fire(x, 10, 384, 48, 192, 192)
    x = fire(x, 11, 384, 64, 256, 256)
    x = fire(x, 12, 512, 64, 256, 256)
    # classifier: Dropout (identity at inference), final conv, ReLU, global average pool
    # not de-meaned: after the global pool, the per-class offsets are what separates the logits
    x = g.relu(g.conv(x, "classifier.1", 512, 1000, 1, bias=True, demean=False), "classifier.2")
    x = g.gap(x, "classifier.3")
    return g.flatten(x, "flatten", output="logits")


_MOBILENET_V2_SETTING = [  # t (expansion), c (out channels), n (repeats), s (first stride)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _mobilenet_v2(g: _GraphBuilder) -> str:
    """torchvision mobilenet_v2 (width 1.0): inverted residuals, ReLU6 = Clip(0, 6), linear bottlenecks."""
    x = g.conv_bn_relu("input", "features.0.0", "features.0.1", "features.0.2", 3, 32, 3, stride=2,
                       gain=1.0, relu6=True)
    cin, idx = 32, 1
    for t, c, n, s in _MOBILENET_V2_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = int(round(cin * t))
            p = f"features.{idx}.conv"
            y, j = x, 0
            if t != 1:
                # the block input is a linear bottleneck (BN output, no ReLU): gain 1
                y = g.conv_bn_relu(y, f"{p}.0.0", f"{p}.0.1", f"{p}.0.2", cin, hidden, 1, gain=1.0, relu6=True)
                j = 1
            # depthwise 3x3 (groups == channels), always fed by a ReLU6: gain 2
            y = g.conv_bn_relu(y, f"{p}.{j}.0", f"{p}.{j}.1", f"{p}.{j}.2", hidden, hidden, 3, stride,
                               groups=hidden, relu6=True)
            y = g.conv_bn(y, f"{p}.{j + 1}", f"{p}.{j + 2}", hidden, c, 1)
            if stride == 1 and cin == c:
                y = g.add(x, y, f"features.{idx}.add")
            x, cin, idx = y, c, idx + 1
    x = g.conv_bn_relu(x, f"features.{idx}.0", f"features.{idx}.1", f"features.{idx}.2", cin, 1280, 1,
                       gain=1.0, relu6=True)
    x = g.flatten(g.gap(x, "avgpool"), "flatten")
    # classifier: Dropout(0.2) (identity at inference), Linear
    return g.gemm(x, "classifier.1", 1280, 1000, output="logits")


# --------------------------------------------------------------------------------------------------------
# Registry and public API
# --------------------------------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[_GraphBuilder], str]] = {
    "resnet18": _resnet18,
    "resnet20-cifar": _cifar_resnet,
    "squeezenet1_1": _squeezenet1_1,
    "mobilenet_v2": _mobilenet_v2,
}

BUILTIN_MODELS: dict[str, ModelInfo] = {
    "resnet18": ModelInfo(
        "resnet18", (3, 224, 224), 1000,
        "torchvision ResNet-18 (BasicBlock [2,2,2,2], BN kept), synthetic weights", "imagenet"),
    "resnet20-cifar": ModelInfo(
        "resnet20-cifar", (3, 32, 32), 10,
        "He et al. CIFAR ResNet-20, option-A shortcuts (akamaster naming, BN kept), synthetic weights", "cifar"),
    "squeezenet1_1": ModelInfo(
        "squeezenet1_1", (3, 224, 224), 1000,
        "torchvision SqueezeNet 1.1 (no BN, ceil-mode pools), synthetic weights", "imagenet"),
    "mobilenet_v2": ModelInfo(
        "mobilenet_v2", (3, 224, 224), 1000,
        "torchvision MobileNetV2 1.0 (depthwise convs, ReLU6 as Clip, BN kept), synthetic weights", "imagenet"),
}

# Other spellings accepted by parse_builtin (after lower-casing and mapping "-" and "." to "_").
_ALIASES = {
    "resnet18": "resnet18",
    "resnet20": "resnet20-cifar",
    "resnet20_cifar": "resnet20-cifar",
    "cifar_resnet20": "resnet20-cifar",
    "squeezenet1_1": "squeezenet1_1",
    "squeezenet": "squeezenet1_1",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenetv2": "mobilenet_v2",
}

# The modern replicas (MobileNetV3, YOLOv8n, DBNet, MTCNN P-Net) live in zoo_modern, which builds on this
# module's _GraphBuilder and adds its models to the three tables above when it is imported; imported here,
# after everything it uses is defined, so every "builtin:NAME" path (loader, bench, CLI) sees one table
# whichever module is imported first.  CLASSIC_MODELS: the four whose tests assume a "logits" classifier.
CLASSIC_MODELS = tuple(BUILTIN_MODELS)
from . import zoo_modern as _zoo_modern  # noqa: E402  (circular by design: zoo_modern extends _GraphBuilder)


def _canonical(name: str) -> str | None:
    if name in BUILTIN_MODELS:
        return name
    key = name.strip().lower().replace("-", "_").replace(".", "_")
    return _ALIASES.get(key)


def is_builtin(path_or_name: object) -> bool:
    """True for a ``"builtin:<name>"`` spec (whether or not the name is known; parse_builtin checks that)."""
    return isinstance(path_or_name, str) and path_or_name.strip().lower().startswith(BUILTIN_PREFIX)


def parse_builtin(spec: str) -> str:
    """``"builtin:resnet18"`` (or a bare known name) -> ``"resnet18"``; unknown names raise ValueError."""
    if not isinstance(spec, str):
        raise TypeError(f"expected a string like 'builtin:resnet18', got {type(spec).__name__}")
    name = spec.strip()
    if name.lower().startswith(BUILTIN_PREFIX):
        name = name[len(BUILTIN_PREFIX):]
    canonical = _canonical(name)
    if canonical is None:
        known = ", ".join(f"{BUILTIN_PREFIX}{n}" for n in BUILTIN_MODELS)
        raise ValueError(f"unknown built-in model {name!r} (from {spec!r}); known: {known}")
    return canonical


@dataclass(frozen=True)
class _Built:
    model: onnx.ModelProto
    probe_input: np.ndarray  # the (1, C, H, W) normalised random image the weights were scaled on
    probe_logits: np.ndarray  # numpy reference forward pass of that image (independent of onnx); first output
    conv_rescale: dict  # conv name -> factor applied on top of the He-normal draw
    probe_outputs: dict  # graph output name -> its numpy reference (all outputs, in graph order)


@functools.lru_cache(maxsize=8)
def _build_cached(name: str, batch: int | None, seed: int) -> _Built:
    info = BUILTIN_MODELS[name]
    probe = np.random.default_rng([seed, zlib.crc32(b"probe")]).standard_normal(info.input_nchw(1))
    g = (_zoo_modern.ModernBuilder if name in _zoo_modern.MODERN_BUILDERS else _GraphBuilder)(
        seed, probe.astype(np.float32))
    out = _BUILDERS[name](g)
    outs = [out] if isinstance(out, str) else list(out)
    b: int | str = "N" if batch is None else batch
    model = g.build(
        graph_name=name.replace("-", "_"),
        input_shape=info.input_nchw(b),  # type: ignore[arg-type]
        output=out,
        num_classes=info.num_classes,
        batch=b,
        metadata={
            "isquant.builtin": name,
            "isquant.seed": str(seed),
            "isquant.preprocessing": info.preprocessing,
            "description": info.description,
        },
    )
    return _Built(model, g.v["input"], g.v[outs[0]], dict(g.conv_rescale), {o: g.v[o] for o in outs})


def builtin_onnx(name: str, batch: int | None = 1, seed: int = 0) -> onnx.ModelProto:
    """Build (or fetch from cache) a built-in model as an ONNX ModelProto; returns a fresh copy.

    ``name`` may be a canonical name, an alias or a ``"builtin:<name>"`` spec.  ``batch`` fixes the batch
    dimension (``None`` makes it symbolic, ``"N"``).  ``seed`` selects the synthetic weights.
    """
    canonical = parse_builtin(name)
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch must be a positive int or None, got {batch!r}")
        batch = int(batch)
    model = onnx.ModelProto()
    model.CopyFrom(_build_cached(canonical, batch, int(seed)).model)
    return model
