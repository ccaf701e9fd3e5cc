"""Built-in replicas of the networks people deploy today: MobileNetV3, YOLOv8n, DBNet, MTCNN P-Net.

Built exactly like the classic built-ins of ``zoo.py`` (numpy + onnx only, no torch, no download): the same
``_GraphBuilder`` draws every tensor from its own seeded stream keyed by the tensor's name, keeps
BatchNormalization nodes with non-trivial statistics, de-means dense convs against their input's channel
means and rescales every conv to unit second moment on a seeded probe image, and the probe's numpy forward
pass is an independent reference of the graph's semantics.  Only the architectures are new, each the real
one with the real node and initializer names (torch ``state_dict`` keys) and the ONNX ops the usual exporter
emits:

- ``mobilenet_v3_small`` / ``mobilenet_v3_large``: torchvision's (``_mobilenet_v3_conf``, width 1.0):
  ``HardSwish`` and ``Relu`` activations, squeeze-and-excitation gates (``GlobalAveragePool`` -> biased 1x1
  ``fc1`` -> ``Relu`` -> ``fc2`` -> ``HardSigmoid(alpha=1/6, beta=0.5)`` -> ``Mul``), the 576/960 ->
  1024/1280 -> 1000 classifier.  Parameter counts equal torchvision's (2,542,856 and 5,483,032; checked in the
  tests).
- ``yolov8n``: ultralytics' yolov8n.yaml at scale n (depth 0.33, width 0.25): Conv = conv + BN + SiLU (exported
  as ``Sigmoid`` + ``Mul``), C2f with a channel ``Split``, SPPF (three 5x5 max pools), nearest ``Resize`` x2,
  ``Concat``, and the Detect head as ``yolo export format=onnx`` writes it: per level box (4 x 16 DFL bins)
  and class (80) branches, flattened and concatenated over the anchors, DFL (``Softmax`` over the bins and a
  fixed 1x1 conv with weights 0..15), dist2bbox (xywh) times the stride, and ``Sigmoid`` class scores:
  one output ``output0`` of shape [N, 84, anchors].  Input **320x320** (2100 anchors) rather than 640 so the
  suite and the benchmark stay cheap on small machines; the graph is the same at any multiple of 32.  The
  class-branch bias starts at -4 (ultralytics uses log(5 / nc / (640 / s)^2) ~ -11, which with synthetic
  weights would make every score ~0): scores then span ~1e-3 .. 0.9, a real dynamic range for the head tests.
- ``dbnet_mv3``: PaddleOCR's DB text detector (``det_mv3_db``): a MobileNetV3-large backbone (torchvision's,
  width 1.0, tapped at strides 4/8/16/32: 24/40/112/960 channels), DBFPN (bias-free 1x1 ``in*_conv`` to 256,
  top-down nearest ``Resize`` x2 + ``Add``, 3x3 ``p*_conv`` to 64, ``Resize`` x8/x4/x2, ``Concat``) and the DB
  probability head (3x3 conv + BN + ReLU, ``ConvTranspose`` 2x2/2 + BN + ReLU, ``ConvTranspose`` 2x2/2,
  ``Sigmoid``): output ``maps`` [N, 1, H, W].  Input 320x320.
- ``mtcnn_pnet``: the MTCNN proposal net (facenet-pytorch's ``PNet`` naming): three 3x3 convs with per-channel
  ``PRelu``, a 2x2 ceil-mode max pool, and two heads, ``prob`` (1x1 conv + ``Softmax`` over the 2 classes) and
  ``reg`` (1x1 conv, 4 box offsets).  Like the real network it has NO BatchNorm (biased convs, as
  squeezenet1_1 here), so it exercises the no-BN range path that the real MTCNN checkpoints take.  Input
  3x120x160 (a pyramid level of a 160x120 frame; P-Net is fully convolutional).

Build cost (2-core host, loaded by other jobs, numpy probe pass included): mobilenet_v3_small 1.1-1.9 s,
mobilenet_v3_large 0.9-3.2 s, yolov8n 1.2-4.8 s, dbnet_mv3 5-8 s (the 320x320 numpy im2col convs), mtcnn_pnet
0.2 s; cached per (model, batch, seed).  Activations stay O(1): every tensor's rms is within 0.02-5 on a
normalised random image except the detector's pixel-space boxes and prior-biased class logits (tests).
Three implementations agree on every output to 1e-4 (the builder's numpy pass, onnxruntime, torch functional
ops in the tests), and TVM's float build matches too (scripts/check_models.py; P-Net in the tests).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import zoo
from .zoo import ModelInfo, _GraphBuilder

__all__ = ["MODERN_BUILDERS", "MODERN_MODELS", "MODERN_ALIASES", "ModernBuilder"]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding (never below 90% of ``v``)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _hardsigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(x / 6.0 + 0.5, 0.0, 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class ModernBuilder(_GraphBuilder):
    """``_GraphBuilder`` plus the ops of the modern networks, each with its numpy semantics."""

    def initializer(self, name: str, array: np.ndarray) -> str:
        # constants (anchors, strides) take part in the numpy forward pass too
        self.v.setdefault(name, np.asarray(array))
        return super().initializer(name, array)

    # -- activations ---------------------------------------------------------------------------------
    def hardswish(self, x: str, name: str) -> str:
        return self.node("HardSwish", [x], name, None, _hardswish(self.v[x]))

    def hardsigmoid(self, x: str, name: str) -> str:
        # torch exports F.hardsigmoid with alpha 1/6 (ONNX's default alpha is 0.2)
        return self.node("HardSigmoid", [x], name, None, _hardsigmoid(self.v[x]), alpha=1.0 / 6.0, beta=0.5)

    def sigmoid(self, x: str, name: str, output: str | None = None) -> str:
        return self.node("Sigmoid", [x], name, output, _sigmoid(self.v[x]))

    def silu(self, x: str, name: str) -> str:
        """torch's SiLU as the ONNX exporter writes it: x * Sigmoid(x)."""
        s = self.sigmoid(x, f"{name}.sigmoid")
        return self.mul(x, s, name)

    def prelu(self, x: str, name: str, c: int) -> str:
        # PReLU slopes around torch's 0.25 init, one per channel, shaped [C, 1, 1] as torch exports them
        slope = (0.25 + 0.05 * self.rng(f"{name}.weight").standard_normal(c)).astype(np.float32)
        w = self.initializer(f"{name}.weight", slope.reshape(c, 1, 1))
        xv = self.v[x]
        return self.node("PRelu", [x, w], name, None, np.where(xv >= 0, xv, xv * slope[None, :, None, None]))

    def act(self, x: str, name: str, kind: str) -> str:
        return {"RE": self.relu, "HS": self.hardswish}[kind](x, name)

    # -- elementwise / data movement -------------------------------------------------------------
    def mul(self, a: str, b: str, name: str) -> str:
        return self.node("Mul", [a, b], name, None, self.v[a] * self.v[b])

    def binary(self, op: str, a: str, b: str, name: str, output: str | None = None) -> str:
        f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
        return self.node(op, [a, b], name, output, f(self.v[a], self.v[b]))

    def split(self, x: str, name: str, sizes: Sequence[int], axis: int = 1) -> list[str]:
        split = self.initializer(f"{name}.split", np.array(sizes, dtype=np.int64))
        if name in self._node_names:
            raise ValueError(f"duplicate node name {name!r}")
        self._node_names.add(name)
        outs = [f"{name}.{i}" for i in range(len(sizes))]
        self.nodes.append(zoo.helper.make_node("Split", [x, split], outs, name=name, axis=axis))
        for out, part in zip(outs, np.split(self.v[x], np.cumsum(sizes)[:-1], axis=axis)):
            self.v[out] = np.ascontiguousarray(part, dtype=np.float32)
        return outs

    def upsample(self, x: str, name: str, factor: int) -> str:
        """nn.Upsample(scale_factor, mode="nearest") as torch exports it: Resize(X, "", scales)."""
        scales = self.constant(f"upsample.scales.{factor}", np.array([1, 1, factor, factor], dtype=np.float32))
        y = self.v[x].repeat(factor, axis=2).repeat(factor, axis=3)
        return self.node("Resize", [x, "", scales], name, None, y, mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def reshape(self, x: str, name: str, shape: Sequence[int]) -> str:
        s = self.initializer(f"{name}.shape", np.array(shape, dtype=np.int64))
        xv = self.v[x]
        # ONNX's 0 copies the input's dimension (keeps the batch symbolic)
        concrete = [xv.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return self.node("Reshape", [x, s], name, None, xv.reshape(concrete))

    def transpose(self, x: str, name: str, perm: Sequence[int]) -> str:
        return self.node("Transpose", [x], name, None, self.v[x].transpose(perm), perm=list(perm))

    def softmax(self, x: str, name: str, axis: int, output: str | None = None) -> str:
        return self.node("Softmax", [x], name, output, _softmax(self.v[x], axis), axis=axis)

    # -- layers ------------------------------------------------------------------------------------
    def conv_bias(self, x: str, name: str, cin: int, cout: int, k: int, bias_value: float | None = None,
                  stride: int = 1, pad: int = 0, gain: float = 1.0, demean: bool = True,
                  output: str | None = None) -> str:
        """A biased conv; ``bias_value`` replaces the small random bias by a constant (a head's prior)."""
        out = self.conv(x, name, cin, cout, k, stride, pad, bias=True, gain=gain, demean=demean, output=output)
        if bias_value is not None:
            old = zoo.numpy_helper.to_array(self.initializers[f"{name}.bias"])
            new = np.full(cout, bias_value, dtype=np.float32)
            self.initializers[f"{name}.bias"] = zoo.numpy_helper.from_array(new, f"{name}.bias")
            self.v[out] = self.v[out] + (new - old)[None, :, None, None]
        return out

    def conv_transpose(self, x: str, name: str, cin: int, cout: int, k: int = 2, stride: int = 2,
                       bias: bool = True) -> str:
        """ConvTranspose with kernel == stride, no padding (DB's upsampling head); unit second moment."""
        if k != stride:
            raise ValueError(f"{name}: only kernel == stride transposed convs are built")
        w = self.rng(f"{name}.weight").standard_normal((cin, cout, k, k), dtype=np.float32)
        xv = self.v[x]
        n, _, h, wd = xv.shape
        # each input pixel writes one k x k block: y[n, o, k*i + a, k*j + b] = sum_c x[n, c, i, j] w[c, o, a, b]
        y = np.einsum("ncij,coab->noiajb", xv, w).reshape(n, cout, h * k, wd * k)
        scale = np.float32(1.0 / np.sqrt(max(float(np.mean(np.square(y, dtype=np.float64))), 1e-12)))
        w *= scale
        y = (y * scale).astype(np.float32)
        inputs = [x, self.initializer(f"{name}.weight", w)]
        if bias:
            b = 0.01 * self.rng(f"{name}.bias").standard_normal(cout, dtype=np.float32)
            inputs.append(self.initializer(f"{name}.bias", b))
            y = y + b[None, :, None, None]
        return self.node("ConvTranspose", inputs, name, None, y, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[0, 0, 0, 0], group=1)

    def maxpool_same(self, x: str, name: str, k: int) -> str:
        return self.maxpool(x, name, k, 1, pad=k // 2)


# --------------------------------------------------------------------------------------------------------
# MobileNetV3 (torchvision)
# --------------------------------------------------------------------------------------------------------

# input channels, kernel, expanded channels, out channels, SE, activation, stride (torchvision, width 1.0)
_MV3_SMALL = [
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1),
]
_MV3_LARGE = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
]


def _mv3_features(g: ModernBuilder, setting: list, taps: Sequence[int] = ()) -> tuple[str, int, dict[int, str]]:
    """torchvision's MobileNetV3 ``features``: stem, inverted residuals, last 1x1 conv.

    Returns the last tensor, its channel count and the outputs of the blocks listed in ``taps``."""
    x = g.conv_bn("input", "features.0.0", "features.0.1", 3, 16, 3, stride=2, gain=1.0)
    x = g.hardswish(x, "features.0.2")
    tapped: dict[int, str] = {}
    cin = 16
    for idx, (c_in, k, exp, c_out, se, act, stride) in enumerate(setting, start=1):
        assert c_in == cin, (idx, c_in, cin)
        p = f"features.{idx}.block"
        y, j = x, 0
        if exp != c_in:
            # the block input is a linear bottleneck (a BN output, no activation): gain 1
            y = g.act(g.conv_bn(y, f"{p}.0.0", f"{p}.0.1", c_in, exp, 1, gain=1.0), f"{p}.0.2", act)
            j = 1
        y = g.act(g.conv_bn(y, f"{p}.{j}.0", f"{p}.{j}.1", exp, exp, k, stride, groups=exp), f"{p}.{j}.2", act)
        j += 1
        if se:
            sq = _make_divisible(exp // 4, 8)
            s = g.gap(y, f"{p}.{j}.avgpool")
            # not de-meaned: on a pooled [N, C, 1, 1] probe the channel means are the input itself
            s = g.relu(g.conv_bias(s, f"{p}.{j}.fc1", exp, sq, 1, demean=False), f"{p}.{j}.activation")
            s = g.hardsigmoid(g.conv_bias(s, f"{p}.{j}.fc2", sq, exp, 1, gain=2.0, demean=False), f"{p}.{j}.scale_activation")
            y = g.mul(s, y, f"{p}.{j}.mul")
            j += 1
        y = g.conv_bn(y, f"{p}.{j}.0", f"{p}.{j}.1", exp, c_out, 1)
        if stride == 1 and c_in == c_out:
            y = g.add(y, x, f"features.{idx}.add")
        x, cin = y, c_out
        if idx in taps:
            tapped[idx] = x
    idx = len(setting) + 1
    last = 6 * cin
    x = g.conv_bn(x, f"features.{idx}.0", f"features.{idx}.1", cin, last, 1, gain=1.0)
    x = g.hardswish(x, f"features.{idx}.2")
    return x, last, tapped


def _mobilenet_v3(g: ModernBuilder, setting: list, last_channel: int) -> str:
    x, c, _ = _mv3_features(g, setting)
    x = g.flatten(g.gap(x, "avgpool"), "flatten")
    x = g.hardswish(g.gemm(x, "classifier.0", c, last_channel), "classifier.1")
    # classifier.2: Dropout (identity at inference)
    return g.gemm(x, "classifier.3", last_channel, 1000, output="logits")


def _mobilenet_v3_small(g: ModernBuilder) -> str:
    return _mobilenet_v3(g, _MV3_SMALL, 1024)


def _mobilenet_v3_large(g: ModernBuilder) -> str:
    return _mobilenet_v3(g, _MV3_LARGE, 1280)


# --------------------------------------------------------------------------------------------------------
# YOLOv8n (ultralytics)
# --------------------------------------------------------------------------------------------------------


def _yolo_conv(g: ModernBuilder, x: str, p: str, cin: int, cout: int, k: int, s: int = 1) -> str:
    """ultralytics Conv: conv (no bias) + BN + SiLU; the input of most is a SiLU output (gain ~1.5)."""
    y = g.conv_bn(x, f"{p}.conv", f"{p}.bn", cin, cout, k, s, pad=k // 2, gain=1.0 if x == "input" else 1.5)
    return g.silu(y, f"{p}.act")


def _c2f(g: ModernBuilder, x: str, p: str, cin: int, cout: int, n: int, shortcut: bool) -> str:
    c = cout // 2
    y = _yolo_conv(g, x, f"{p}.cv1", cin, 2 * c, 1)
    parts = g.split(y, f"{p}.split", [c, c])
    for i in range(n):
        b = f"{p}.m.{i}"
        z = _yolo_conv(g, _yolo_conv(g, parts[-1], f"{b}.cv1", c, c, 3), f"{b}.cv2", c, c, 3)
        parts.append(g.add(parts[-1], z, f"{b}.add") if shortcut else z)
    return _yolo_conv(g, g.concat(parts, f"{p}.concat"), f"{p}.cv2", (2 + n) * c, cout, 1)


def _sppf(g: ModernBuilder, x: str, p: str, cin: int, cout: int, k: int = 5) -> str:
    y = [_yolo_conv(g, x, f"{p}.cv1", cin, cin // 2, 1)]
    for i in range(3):
        y.append(g.maxpool_same(y[-1], f"{p}.m.{i}", k))
    return _yolo_conv(g, g.concat(y, f"{p}.concat"), f"{p}.cv2", 2 * cin, cout, 1)


def _yolov8n(g: ModernBuilder, nc: int = 80, reg_max: int = 16) -> str:
    x = _yolo_conv(g, "input", "model.0", 3, 16, 3, 2)
    x = _yolo_conv(g, x, "model.1", 16, 32, 3, 2)
    x = _c2f(g, x, "model.2", 32, 32, 1, True)
    x = _yolo_conv(g, x, "model.3", 32, 64, 3, 2)
    p3 = _c2f(g, x, "model.4", 64, 64, 2, True)
    x = _yolo_conv(g, p3, "model.5", 64, 128, 3, 2)
    p4 = _c2f(g, x, "model.6", 128, 128, 2, True)
    x = _yolo_conv(g, p4, "model.7", 128, 256, 3, 2)
    x = _c2f(g, x, "model.8", 256, 256, 1, True)
    p5 = _sppf(g, x, "model.9", 256, 256)
    x = g.concat([g.upsample(p5, "model.10", 2), p4], "model.11")
    h4 = _c2f(g, x, "model.12", 384, 128, 1, False)
    x = g.concat([g.upsample(h4, "model.13", 2), p3], "model.14")
    o3 = _c2f(g, x, "model.15", 192, 64, 1, False)
    x = g.concat([_yolo_conv(g, o3, "model.16", 64, 64, 3, 2), h4], "model.17")
    o4 = _c2f(g, x, "model.18", 192, 128, 1, False)
    x = g.concat([_yolo_conv(g, o4, "model.19", 128, 128, 3, 2), p5], "model.20")
    o5 = _c2f(g, x, "model.21", 384, 256, 1, False)

    # Detect: per level cat(box branch cv2, class branch cv3) -> [N, 4*reg_max + nc, H*W]
    c2, c3 = max(16, 64 // 4, reg_max * 4), max(64, min(nc, 100))
    no = 4 * reg_max + nc
    flat, anchors, strides = [], [], []
    for i, (feat, ch) in enumerate([(o3, 64), (o4, 128), (o5, 256)]):
        p = "model.22"
        box = _yolo_conv(g, _yolo_conv(g, feat, f"{p}.cv2.{i}.0", ch, c2, 3), f"{p}.cv2.{i}.1", c2, c2, 3)
        box = g.conv_bias(box, f"{p}.cv2.{i}.2", c2, 4 * reg_max, 1, bias_value=1.0, gain=1.5)
        cls = _yolo_conv(g, _yolo_conv(g, feat, f"{p}.cv3.{i}.0", ch, c3, 3), f"{p}.cv3.{i}.1", c3, c3, 3)
        cls = g.conv_bias(cls, f"{p}.cv3.{i}.2", c3, nc, 1, bias_value=-4.0, gain=1.5)
        y = g.concat([box, cls], f"{p}.concat.{i}")
        _, _, h, w = g.v[y].shape
        flat.append(g.reshape(y, f"{p}.reshape.{i}", [0, no, h * w]))
        stride = int(g.v["input"].shape[2]) // h
        sy, sx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5,
                             indexing="ij")
        anchors.append(np.stack([sx.ravel(), sy.ravel()]))
        strides.append(np.full((1, h * w), stride, dtype=np.float32))
    p = "model.22"
    cat = g.concat(flat, f"{p}.concat", axis=2)
    n_anchor = g.v[cat].shape[2]
    box, cls = g.split(cat, f"{p}.split", [4 * reg_max, nc])
    # DFL: [N, 64, A] -> [N, 4, 16, A] -> [N, 16, 4, A], softmax over the bins, expectation as a fixed conv
    d = g.transpose(g.reshape(box, f"{p}.dfl.reshape", [0, 4, reg_max, n_anchor]), f"{p}.dfl.transpose",
                    [0, 2, 1, 3])
    d = g.softmax(d, f"{p}.dfl.softmax", axis=1)
    bins = np.arange(reg_max, dtype=np.float32).reshape(1, reg_max, 1, 1)
    wname = g.initializer(f"{p}.dfl.conv.weight", bins)
    d = g.node("Conv", [d, wname], f"{p}.dfl.conv", None, np.einsum("nkha,k->nha", g.v[d], bins.ravel())[:, None],
               kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    d = g.reshape(d, f"{p}.dfl.reshape2", [0, 4, n_anchor])
    lt, rb = g.split(d, f"{p}.dist2bbox.split", [2, 2])
    anc = g.initializer(f"{p}.anchors", np.concatenate(anchors, axis=1)[None])
    x1y1 = g.binary("Sub", anc, lt, f"{p}.dist2bbox.sub")
    x2y2 = g.binary("Add", anc, rb, f"{p}.dist2bbox.add")
    two = g.constant("two", np.array(2.0, dtype=np.float32))
    cxy = g.binary("Div", g.binary("Add", x1y1, x2y2, f"{p}.dist2bbox.add2"), two, f"{p}.dist2bbox.div")
    wh = g.binary("Sub", x2y2, x1y1, f"{p}.dist2bbox.sub2")
    dbox = g.concat([cxy, wh], f"{p}.dist2bbox.concat")
    st = g.initializer(f"{p}.strides", np.concatenate(strides, axis=1)[None])
    dbox = g.binary("Mul", dbox, st, f"{p}.mul")
    scores = g.sigmoid(cls, f"{p}.sigmoid")
    return g.concat([dbox, scores], "output0")


# --------------------------------------------------------------------------------------------------------
# DBNet with a MobileNetV3 backbone (PaddleOCR det_mv3_db), MTCNN P-Net
# --------------------------------------------------------------------------------------------------------


def _dbnet_mv3(g: ModernBuilder) -> str:
    # outputs of the last block at strides 4, 8, 16 and the final 1x1 conv (stride 32)
    c5_in, c5_ch, taps = _mv3_features(g, _MV3_LARGE, taps=(3, 6, 12))
    chans = [24, 40, 112, c5_ch]
    feats = [taps[3], taps[6], taps[12], c5_in]
    inner = 256
    ins = [g.conv(f, f"neck.in{i + 2}_conv", c, inner, 1) for i, (f, c) in enumerate(zip(feats, chans))]
    out4 = g.add(ins[2], g.upsample(ins[3], "neck.up5", 2), "neck.add4")
    out3 = g.add(ins[1], g.upsample(out4, "neck.up4", 2), "neck.add3")
    out2 = g.add(ins[0], g.upsample(out3, "neck.up3", 2), "neck.add2")
    ps = [g.conv(t, f"neck.p{i + 2}_conv", inner, inner // 4, 3, pad=1, gain=1.0)
          for i, t in enumerate([out2, out3, out4, ins[3]])]
    p5 = g.upsample(ps[3], "neck.up_p5", 8)
    p4 = g.upsample(ps[2], "neck.up_p4", 4)
    p3 = g.upsample(ps[1], "neck.up_p3", 2)
    fuse = g.concat([p5, p4, p3, ps[0]], "neck.concat")
    x = g.conv_bn(fuse, "head.binarize.conv1", "head.binarize.conv_bn1", inner, inner // 4, 3, gain=1.0)
    x = g.relu(x, "head.binarize.relu1")
    x = g.relu(g.bn(g.conv_transpose(x, "head.binarize.conv2", inner // 4, inner // 4), "head.binarize.conv_bn2",
                    inner // 4), "head.binarize.relu2")
    x = g.conv_transpose(x, "head.binarize.conv3", inner // 4, 1)
    return g.sigmoid(x, "head.binarize.sigmoid", output="maps")


def _mtcnn_pnet(g: ModernBuilder) -> tuple[str, str]:
    x = g.prelu(g.conv_bias("input", "conv1", 3, 10, 3), "prelu1", 10)
    x = g.maxpool(x, "pool1", 2, 2, ceil_mode=True)
    x = g.prelu(g.conv_bias(x, "conv2", 10, 16, 3, gain=1.5), "prelu2", 16)
    x = g.prelu(g.conv_bias(x, "conv3", 16, 32, 3, gain=1.5), "prelu3", 32)
    a = g.conv_bias(x, "conv4_1", 32, 2, 1, gain=1.5)
    prob = g.softmax(a, "softmax4_1", axis=1, output="prob")
    reg = g.conv_bias(x, "conv4_2", 32, 4, 1, gain=1.5, output="reg")
    return prob, reg


# --------------------------------------------------------------------------------------------------------
# Registration (zoo.py merges these into its tables)
# --------------------------------------------------------------------------------------------------------

MODERN_BUILDERS = {
    "mobilenet_v3_small": _mobilenet_v3_small,
    "mobilenet_v3_large": _mobilenet_v3_large,
    "yolov8n": _yolov8n,
    "dbnet_mv3": _dbnet_mv3,
    "mtcnn_pnet": _mtcnn_pnet,
}

MODERN_MODELS: dict[str, ModelInfo] = {
    "mobilenet_v3_small": ModelInfo(
        "mobilenet_v3_small", (3, 224, 224), 1000,
        "torchvision MobileNetV3-small (hard-swish, SE gates with hard-sigmoid, BN kept), synthetic weights",
        "imagenet"),
    "mobilenet_v3_large": ModelInfo(
        "mobilenet_v3_large", (3, 224, 224), 1000,
        "torchvision MobileNetV3-large (hard-swish, SE gates with hard-sigmoid, BN kept), synthetic weights",
        "imagenet"),
    "yolov8n": ModelInfo(
        "yolov8n", (3, 320, 320), 80,
        "ultralytics YOLOv8n at 320x320 (SiLU, C2f split, SPPF, nearest upsample, DFL box + sigmoid score head "
        "as exported: output0 [N, 84, 2100]), synthetic weights", "imagenet"),
    "dbnet_mv3": ModelInfo(
        "dbnet_mv3", (3, 320, 320), 1,
        "PaddleOCR DBNet text detector, MobileNetV3-large backbone, DBFPN (nearest upsample), ConvTranspose "
        "probability head (maps [N, 1, 320, 320]), synthetic weights", "imagenet"),
    "mtcnn_pnet": ModelInfo(
        "mtcnn_pnet", (3, 120, 160), 2,
        "MTCNN P-Net (PReLU, ceil-mode pool; outputs prob [N, 2, h, w] and reg [N, 4, h, w]; no BN, as the "
        "real net), synthetic weights", "imagenet"),
}

MODERN_ALIASES = {
    "mobilenet_v3_small": "mobilenet_v3_small", "mobilenetv3_small": "mobilenet_v3_small",
    "mobilenet_v3_large": "mobilenet_v3_large", "mobilenetv3_large": "mobilenet_v3_large",
    "yolov8n": "yolov8n", "yolov8": "yolov8n",
    "dbnet_mv3": "dbnet_mv3", "dbnet": "dbnet_mv3",
    "mtcnn_pnet": "mtcnn_pnet", "pnet": "mtcnn_pnet",
}

# into zoo's tables (zoo imports this module at its end; see there)
zoo._BUILDERS.update(MODERN_BUILDERS)  # type: ignore[arg-type]
zoo.BUILTIN_MODELS.update(MODERN_MODELS)
zoo._ALIASES.update(MODERN_ALIASES)
