#!/usr/bin/env python3
"""Generates the session benchmark set: models shaped like the ones people ship, with random
weights (fixed seeds, numpy + onnx, nothing downloaded). A session's cost depends on the
shapes, dtypes, operators and storage of the weights, not on their trained values. Weights
are drawn uniform (as torch's default initialisers draw them) with a standard deviation that
keeps the activations in range; the LLMs' 4-bit values are random bytes.

  vgg16           VGG16: 13 Conv 3x3 + Relu, 5 MaxPool, Flatten, Gemm 25088-4096-4096-1000;
                  float32, about 528 MiB (one 392 MiB weight)
  resnet50        ResNet-50 (v1.5): bottleneck blocks 3-4-6-3, BatchNormalization nodes kept
                  (onnxruntime folds them into the Conv at load; torch's TorchScript exporter in
                  eval mode folds them itself, as checked with torch 2.9.1), Gemm 2048-1000;
                  float32, ~98 MiB
  resnet50_fp16   the same graph with float16 weights and float16 compute, float32 input and
                  output through Cast (as float16 converters keeping the I/O types write it);
                  ~49 MiB
  resnet50_int8   the same network statically quantized in QDQ format (as
                  onnxruntime.quantization.quantize_static writes it): BatchNormalization folded,
                  int8 weights per channel and int32 biases behind DequantizeLinear, uint8
                  activations through QuantizeLinear/DequantizeLinear pairs; ~25 MiB
  vit_b16         ViT-B/16: patch Conv 16x16 stride 16, class token Concat, position embedding
                  Add, 12 encoder blocks (d 768, 12 heads, MLP 3072, LayerNormalization, Gelu
                  of opset 20), Gemm 768-1000; float32, ~330 MiB
  vit_b16_int8    the same network dynamically quantized (as quantize_dynamic writes it): every
                  MatMul with a weight becomes DynamicQuantizeLinear + MatMulInteger (int8
                  weights) + Cast + Mul by the scales; the patch Conv stays float32; ~85 MiB
  mobilenet_v2    MobileNetV2: inverted residual blocks (pointwise Conv, depthwise Conv with
                  group = channels, BatchNormalization, ReLU6 as Clip); float32, ~13.5 MiB
  mobilenet_v2_21k  the same with a head of 21,843 classes (as ImageNet-21k classifiers): one
                  107 MiB Gemm weight beside 9 MiB of small tensors; float32, ~116 MiB
  mobilenet_v2_10k, mobilenet_v2_4k  heads of 10,000 and 4,096 classes (49 and 20 MiB
                  weights); ~58 and ~29 MiB
  llm_2g          a decoder stack shaped like Phi-3-mini (d 3072, 32 layers, 32 heads of 96,
                  MLP 8192, vocabulary 32064): float16 embedding Gather, per layer
                  SimplifiedLayerNormalization (RMSNorm), Q/K/V/O and gate/up/down as
                  com.microsoft MatMulNBits (bits 4, block 32, float16 scales, packed zero
                  points), attention as MatMul/Softmax with a causal mask (no KV cache, no
                  rotary embedding), float16 lm_head MatMul; ~2.3 GiB in 3 data files
  llm_8g          the same shaped like Phi-3-medium (d 5120, 40 layers, 40 heads of 128 with 10
                  key/value heads, MLP 17920); ~7.95 GiB in 8 data files

Every model but the two LLMs in two storages: OUT/NAME/single/model.onnx (onnx.save, every
weight inside) and OUT/NAME/external/model.onnx + model.onnx.data (onnx.save with
save_as_external_data, all_tensors_to_one_file, size_threshold 1024). The LLMs only in
external/ (over protobuf's 2 GiB), their data written in chunks (the generator holds no
weight whole) into files of about 1 GiB split at tensor boundaries, each tensor at an
offset aligned to 4 KiB. A model is written to OUT/.NAME.partial and renamed to OUT/NAME
once complete and checked.

Each model is then run once by onnxruntime (CPU, default session options) on a random
input, in both storages, and its outputs must be finite; llm_2g runs one forward pass of 4
tokens; llm_8g is not run unless --check-big is given. Usage:

  python3 bench/make_session_models.py [--out bench-data/session-models] [--only NAME,...]
                                       [--no-check] [--check-big] [--list]
"""

import argparse
import os
import pathlib
import shutil
import time
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIB = 1 << 20
GIB = 1 << 30
PRODUCER = "onnx-protect-bench"
F32, F16 = np.float32, np.float16
ONNX_TYPE = {F32: TensorProto.FLOAT, F16: TensorProto.FLOAT16}


def uniform(rng, shape, std):
    """float32 values uniform in [-std·√3, std·√3] (standard deviation std), as the default
    initialisers of torch's Linear and Conv draw them; 3 times faster than a normal."""
    a = rng.random(shape, dtype=np.float32)
    a -= np.float32(0.5)
    a *= np.float32(2 * np.sqrt(3.0) * std)
    return a


class Graph:
    """Nodes and initializers of one graph, with a seeded generator for the weights."""

    def __init__(self, name, dtype=F32):
        self.name = name
        self.dtype = dtype
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.nodes = []
        self.inits = []
        self.count = 0

    def tensor(self, name, array):
        # (np.ascontiguousarray would make a scalar a 1-element vector.)
        self.inits.append(numpy_helper.from_array(np.array(array, order="C", copy=None), name))
        return name

    def weight(self, name, shape, std, dtype=None):
        a = uniform(self.rng, shape, std).astype(dtype or self.dtype, copy=False)
        t = TensorProto()
        t.name = name
        t.data_type = ONNX_TYPE[a.dtype.type]
        t.dims.extend(shape)
        t.raw_data = a.tobytes()  # (numpy_helper.from_array makes one more copy of a)
        self.inits.append(t)
        return name

    def const(self, name, values, dtype):
        return self.tensor(name, np.array(values, dtype=dtype))

    def op(self, op_type, inputs, outputs=1, name=None, domain=None, **attrs):
        self.count += 1
        name = name or f"{op_type}_{self.count}"
        outs = [f"{name}_out{i}" if outputs > 1 else f"{name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain, **attrs))
        return outs if outputs > 1 else outs[0]

    def model(self, inputs, outputs, opset, ir_version, domains=()):
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.inits)
        imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
        m = helper.make_model(graph, producer_name=PRODUCER, opset_imports=imports)
        m.ir_version = ir_version
        return m


def image_input(g, dtype):
    """The [batch, 3, 224, 224] float32 input, cast to float16 for a float16 graph."""
    vi = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])
    x = "input" if dtype == F32 else g.op("Cast", ["input"], name="input_cast", to=TensorProto.FLOAT16)
    return vi, x


def logits_output(g, y, dtype, classes=1000):
    if dtype != F32:
        y = g.op("Cast", [y], name="output_cast", to=TensorProto.FLOAT)
    g.nodes[-1].output[0] = "logits"
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])


# ---- float32 / float16 CNN pieces ---------------------------------------------------------


def conv_bn(g, x, cin, cout, k, stride=1, group=1, act="relu", name="", gamma=1.0):
    """Conv without bias, BatchNormalization (scales about `gamma`), then Relu, Clip(0, 6) or
    nothing."""
    fan_in = cin // group * k * k
    w = g.weight(f"{name}.weight", (cout, cin // group, k, k), np.sqrt(2.0 / fan_in))
    y = g.op("Conv", [x, w], name=name, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
             group=group)
    d = g.dtype
    scale = g.tensor(f"{name}.bn.weight", (gamma * (1.0 + 0.1 * g.rng.standard_normal(cout))).astype(d))
    bias = g.tensor(f"{name}.bn.bias", (0.05 * g.rng.standard_normal(cout)).astype(d))
    mean = g.tensor(f"{name}.bn.running_mean", (0.05 * g.rng.standard_normal(cout)).astype(d))
    var = g.tensor(f"{name}.bn.running_var", g.rng.uniform(0.5, 1.5, cout).astype(d))
    y = g.op("BatchNormalization", [y, scale, bias, mean, var], name=f"{name}.bn", epsilon=1e-5)
    if act == "relu":
        y = g.op("Relu", [y], name=f"{name}.relu")
    elif act == "relu6":
        y = g.op("Clip", [y, g.const(f"{name}.clip.min", 0.0, d), g.const(f"{name}.clip.max", 6.0, d)],
                 name=f"{name}.relu6")
    return y


def gemm(g, x, fin, fout, name):
    w = g.weight(f"{name}.weight", (fout, fin), np.sqrt(1.0 / fin))
    b = g.weight(f"{name}.bias", (fout,), 0.01)
    return g.op("Gemm", [x, w, b], name=name, transB=1)


def vgg16(name="vgg16"):
    g = Graph(name)
    vi, x = image_input(g, F32)
    cin, block, idx = 3, 1, 1
    for c in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if c == "M":
            x = g.op("MaxPool", [x], name=f"pool{block}", kernel_shape=[2, 2], strides=[2, 2])
            block, idx = block + 1, 1
            continue
        w = g.weight(f"features.conv{block}_{idx}.weight", (c, cin, 3, 3), np.sqrt(2.0 / (cin * 9)))
        b = g.weight(f"features.conv{block}_{idx}.bias", (c,), 0.01)
        x = g.op("Conv", [x, w, b], name=f"conv{block}_{idx}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = g.op("Relu", [x], name=f"relu{block}_{idx}")
        cin, idx = c, idx + 1
    x = g.op("Flatten", [x], name="flatten", axis=1)
    x = g.op("Relu", [gemm(g, x, 512 * 7 * 7, 4096, "classifier.0")], name="classifier.1")
    x = g.op("Relu", [gemm(g, x, 4096, 4096, "classifier.3")], name="classifier.4")
    gemm(g, x, 4096, 1000, "classifier.6")
    return g.model([vi], [logits_output(g, None, F32)], 17, 8)


def resnet50_body(g, x, conv, add_relu, pool, head):
    """The ResNet-50 v1.5 topology over `conv(x, cin, cout, k, stride, relu, name)`."""
    x = conv(x, 3, 64, 7, 2, True, "conv1")
    x = pool(g.op("MaxPool", [x], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    cin = 64
    for li, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), 1):
        for b in range(blocks):
            stride = 2 if b == 0 and li > 1 else 1
            p = f"layer{li}.{b}"
            y = conv(x, cin, width, 1, 1, True, f"{p}.conv1")
            y = conv(y, width, width, 3, stride, True, f"{p}.conv2")
            y = conv(y, width, width * 4, 1, 1, False, f"{p}.conv3")
            short = conv(x, cin, width * 4, 1, stride, False, f"{p}.downsample") if b == 0 else x
            x = add_relu(y, short, p)
            cin = width * 4
    x = pool(g.op("GlobalAveragePool", [x], name="avgpool"))
    x = g.op("Flatten", [x], name="flatten", axis=1)
    return head(x, 2048, 1000, "fc")


def resnet50(name="resnet50", dtype=F32):
    g = Graph(name, dtype)
    vi, x = image_input(g, dtype)

    def conv(x, cin, cout, k, stride, relu, n):
        # The last BatchNormalization of a residual branch scaled down (as trained networks
        # have it), so that the activations stay well inside float16's range.
        return conv_bn(g, x, cin, cout, k, stride, act="relu" if relu else None, name=n, gamma=1.0 if relu else 0.2)

    def add_relu(a, b, p):
        return g.op("Relu", [g.op("Add", [a, b], name=f"{p}.add")], name=f"{p}.relu")

    y = resnet50_body(g, x, conv, add_relu, lambda v: v, lambda v, i, o, n: gemm(g, v, i, o, n))
    return g.model([vi], [logits_output(g, y, dtype)], 17, 8)


def resnet50_int8(name="resnet50_int8"):
    """QDQ: every activation through QuantizeLinear/DequantizeLinear (uint8), weights int8
    per output channel, biases int32 with the scale input scale × weight scale."""
    g = Graph(name)
    vi = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])
    scales = {}

    def qdq(x, n, scale, zero):
        s = g.const(f"{n}.act_scale", scale, F32)
        z = g.const(f"{n}.act_zero_point", zero, np.uint8)
        q = g.op("QuantizeLinear", [x, s, z], name=f"{n}.QuantizeLinear")
        y = g.op("DequantizeLinear", [q, s, z], name=f"{n}.DequantizeLinear")
        scales[y] = scale
        return y

    def qweight(n, w_float, axis):
        cout = w_float.shape[0]
        flat = np.abs(w_float.reshape(cout, -1)).max(axis=1)
        s = (flat / 127.0).astype(F32)
        q = np.clip(np.rint(w_float / s.reshape((-1,) + (1,) * (w_float.ndim - 1))), -127, 127).astype(np.int8)
        wq = g.tensor(f"{n}.weight_quantized", q)
        ws = g.tensor(f"{n}.weight_scale", s)
        wz = g.tensor(f"{n}.weight_zero_point", np.zeros(cout, np.int8))
        return g.op("DequantizeLinear", [wq, ws, wz], name=f"{n}.weight_DequantizeLinear", axis=axis), s

    def qbias(n, x, ws, cout):
        bs = (scales[x] * ws).astype(F32)
        b = np.rint(0.05 * g.rng.standard_normal(cout) / bs).astype(np.int32)
        bq = g.tensor(f"{n}.bias_quantized", b)
        bsn = g.tensor(f"{n}.bias_scale", bs)
        bz = g.tensor(f"{n}.bias_zero_point", np.zeros(cout, np.int32))
        return g.op("DequantizeLinear", [bq, bsn, bz], name=f"{n}.bias_DequantizeLinear", axis=0)

    def conv(x, cin, cout, k, stride, relu, n):
        w = uniform(g.rng, (cout, cin, k, k), np.sqrt(2.0 / (cin * k * k)))
        wd, ws = qweight(n, w, 0)
        y = g.op("Conv", [x, wd, qbias(n, x, ws, cout)], name=n, kernel_shape=[k, k], strides=[stride, stride],
                 pads=[k // 2] * 4)
        if relu:
            return qdq(g.op("Relu", [y], name=f"{n}.relu"), f"{n}.relu", 0.05, 0)
        return qdq(y, n, 0.05, 128)

    def add_relu(a, b, p):
        y = g.op("Relu", [g.op("Add", [a, b], name=f"{p}.add")], name=f"{p}.relu")
        return qdq(y, f"{p}.relu", 0.05, 0)

    def head(x, fin, fout, n):
        # x is Flatten's output: its scale is that of Flatten's input.
        scales[x] = scales[next(node.input[0] for node in g.nodes if node.output[0] == x)]
        w = uniform(g.rng, (fout, fin), np.sqrt(1.0 / fin))
        wd, ws = qweight(n, w, 0)
        return g.op("Gemm", [x, wd, qbias(n, x, ws, fout)], name=n, transB=1)

    x = qdq("input", "input", 1.0 / 32, 128)
    y = resnet50_body(g, x, conv, add_relu, lambda v: qdq(v, v, 0.05, 0), head)
    return g.model([vi], [logits_output(g, y, F32)], 17, 8)


def mobilenet_v2(name="mobilenet_v2", classes=1000):
    g = Graph(name)
    vi, x = image_input(g, F32)
    x = conv_bn(g, x, 3, 32, 3, 2, act="relu6", name="features.0")
    cin, i = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for j in range(n):
            stride = s if j == 0 else 1
            hidden = cin * t
            p = f"features.{i}"
            y = x
            if t != 1:
                y = conv_bn(g, y, cin, hidden, 1, act="relu6", name=f"{p}.expand")
            y = conv_bn(g, y, hidden, hidden, 3, stride, group=hidden, act="relu6", name=f"{p}.depthwise")
            y = conv_bn(g, y, hidden, c, 1, act=None, name=f"{p}.project")
            x = g.op("Add", [x, y], name=f"{p}.add") if stride == 1 and cin == c else y
            cin, i = c, i + 1
    x = conv_bn(g, x, cin, 1280, 1, act="relu6", name=f"features.{i}")
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], name="avgpool")], name="flatten", axis=1)
    gemm(g, x, 1280, classes, "classifier.1")
    return g.model([vi], [logits_output(g, None, F32, classes)], 17, 8)


def vit_b16(name="vit_b16", int8=False):
    d, heads, mlp, layers, tokens = 768, 12, 3072, 12, 197
    g = Graph(name)
    vi = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])

    def linear(x, fin, fout, n):
        b = g.weight(f"{n}.bias", (fout,), 0.01)
        if not int8:
            w = g.weight(f"{n}.weight", (fin, fout), np.sqrt(1.0 / fin))
            return g.op("Add", [g.op("MatMul", [x, w], name=f"{n}.MatMul"), b], name=f"{n}.Add")
        w = uniform(g.rng, (fin, fout), np.sqrt(1.0 / fin))
        ws = np.float32(np.abs(w).max() / 127.0)
        wq = g.tensor(f"{n}.weight_quantized", np.clip(np.rint(w / ws), -127, 127).astype(np.int8))
        del w
        xq, xs, xz = g.op("DynamicQuantizeLinear", [x], outputs=3, name=f"{n}.DynamicQuantizeLinear")
        y = g.op("MatMulInteger", [xq, wq, xz, g.const(f"{n}.weight_zero_point", 0, np.int8)],
                 name=f"{n}.MatMulInteger")
        y = g.op("Cast", [y], name=f"{n}.Cast", to=TensorProto.FLOAT)
        scale = g.op("Mul", [xs, g.const(f"{n}.weight_scale", ws, F32)], name=f"{n}.scale_Mul")
        y = g.op("Mul", [y, scale], name=f"{n}.Mul")
        return g.op("Add", [y, b], name=f"{n}.Add")

    def layernorm(x, n):
        s = g.tensor(f"{n}.weight", (1.0 + 0.05 * g.rng.standard_normal(d)).astype(F32))
        b = g.weight(f"{n}.bias", (d,), 0.01)
        return g.op("LayerNormalization", [x, s, b], name=n, axis=-1, epsilon=1e-6)

    w = g.weight("conv_proj.weight", (d, 3, 16, 16), np.sqrt(1.0 / (3 * 256)))
    x = g.op("Conv", ["input", w, g.weight("conv_proj.bias", (d,), 0.01)], name="conv_proj", kernel_shape=[16, 16],
             strides=[16, 16])
    x = g.op("Reshape", [x, g.const("patches_shape", [0, d, -1], np.int64)], name="patches_reshape")
    x = g.op("Transpose", [x], name="patches_transpose", perm=[0, 2, 1])
    batch = g.op("Slice", [g.op("Shape", [x], name="batch_shape"), g.const("zero1", [0], np.int64),
                           g.const("one1", [1], np.int64)], name="batch_slice")
    cls_shape = g.op("Concat", [batch, g.const("cls_tail", [1, d], np.int64)], name="cls_shape", axis=0)
    cls = g.op("Expand", [g.weight("class_token", (1, 1, d), 0.02), cls_shape], name="cls_expand")
    x = g.op("Concat", [cls, x], name="cls_concat", axis=1)
    x = g.op("Add", [x, g.weight("encoder.pos_embedding", (1, tokens, d), 0.02)], name="pos_add")
    head_shape = g.const("head_shape", [0, 0, heads, d // heads], np.int64)
    model_shape = g.const("model_shape", [0, 0, d], np.int64)
    inv_sqrt = g.const("inv_sqrt_head_dim", 1.0 / np.sqrt(d // heads), F32)
    for i in range(layers):
        p = f"encoder.layers.{i}"
        y = layernorm(x, f"{p}.ln_1")
        qkv = linear(y, d, 3 * d, f"{p}.self_attention.in_proj")
        q, k, v = g.op("Split", [qkv, g.const(f"{p}.split", [d, d, d], np.int64)], outputs=3,
                       name=f"{p}.qkv_split", axis=-1)
        q = g.op("Transpose", [g.op("Reshape", [q, head_shape], name=f"{p}.q_reshape")], name=f"{p}.q_transpose",
                 perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, head_shape], name=f"{p}.k_reshape")], name=f"{p}.k_transpose",
                 perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, head_shape], name=f"{p}.v_reshape")], name=f"{p}.v_transpose",
                 perm=[0, 2, 1, 3])
        s = g.op("Mul", [g.op("MatMul", [q, k], name=f"{p}.scores"), inv_sqrt], name=f"{p}.scale")
        a = g.op("MatMul", [g.op("Softmax", [s], name=f"{p}.softmax", axis=-1), v], name=f"{p}.context")
        a = g.op("Reshape", [g.op("Transpose", [a], name=f"{p}.context_transpose", perm=[0, 2, 1, 3]), model_shape],
                 name=f"{p}.context_reshape")
        x = g.op("Add", [x, linear(a, d, d, f"{p}.self_attention.out_proj")], name=f"{p}.residual_1")
        y = layernorm(x, f"{p}.ln_2")
        y = g.op("Gelu", [linear(y, d, mlp, f"{p}.mlp.0")], name=f"{p}.mlp.gelu")
        x = g.op("Add", [x, linear(y, mlp, d, f"{p}.mlp.3")], name=f"{p}.residual_2")
    x = layernorm(x, "encoder.ln")
    x = g.op("Gather", [x, g.const("class_index", 0, np.int64)], name="class_gather", axis=1)
    linear(x, d, 1000, "heads.head")
    return g.model([vi], [logits_output(g, None, F32)], 20, 9)


# ---- LLM decoder stacks, written in chunks to several data files --------------------------

LLM_SHAPES = {
    # d, layers, heads, kv heads, head dim, MLP, vocabulary
    "llm_2g": (3072, 32, 32, 32, 96, 8192, 32064),  # Phi-3-mini
    "llm_8g": (5120, 40, 40, 10, 128, 17920, 32064),  # Phi-3-medium
}
BLOCK = 32
CHUNK = 64 * MIB
FILE_BYTES = GIB
ALIGN = 4096


class DataFiles:
    """Writes tensors into model_0.data, model_1.data, ... (a new file once one holds
    FILE_BYTES), each tensor at an offset aligned to ALIGN, from chunks."""

    def __init__(self, folder):
        self.folder = folder
        self.index = -1
        self.fh = None
        self.names = []

    def write(self, name, onnx_type, dims, chunks):
        if self.fh is None or self.fh.tell() >= FILE_BYTES:
            if self.fh:
                self.fh.close()
            self.index += 1
            self.location = f"model_{self.index}.data"
            self.names.append(self.location)
            self.fh = open(os.path.join(self.folder, self.location), "wb")
        pad = -self.fh.tell() % ALIGN
        self.fh.write(b"\0" * pad)
        offset = self.fh.tell()
        for c in chunks:
            self.fh.write(memoryview(np.ascontiguousarray(c)).cast("B"))
        t = TensorProto()
        t.name = name
        t.data_type = onnx_type
        t.dims.extend(dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(offset)), ("length", str(self.fh.tell() - offset))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def close(self):
        if self.fh:
            self.fh.close()


def chunked(total, per_chunk, make):
    """Calls make(n) for pieces of n ≤ per_chunk elements adding up to total."""
    left = total
    while left:
        n = min(left, per_chunk)
        yield make(n)
        left -= n


def llm(name, out_dir):
    d, layers, heads, kv_heads, hd, ffn, vocab = LLM_SHAPES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    files = DataFiles(out_dir)
    g = Graph(name, F16)
    inits = g.inits

    def weight16(n_name, shape, std):
        n = int(np.prod(shape))
        inits.append(files.write(n_name, TensorProto.FLOAT16, shape,
                                 chunked(n, CHUNK // 4, lambda k: uniform(rng, k, std).astype(F16))))
        return n_name

    def norm_weight(n_name):
        inits.append(files.write(n_name, TensorProto.FLOAT16, [d], [(1.0 + 0.05 * rng.standard_normal(d)).astype(F16)]))
        return n_name

    def matmul_nbits(x, k, n, n_name):
        """A MatMulNBits of [k, n]: 4-bit values packed two to a byte ([n, k/32, 16]), one
        float16 scale and one 4-bit zero point per block of 32; scales are set so that the
        output of a unit-variance input has about unit variance (uniform 4-bit values around
        8 have a variance of about 21)."""
        blocks = k // BLOCK
        inits.append(files.write(f"{n_name}.weight_Q4", TensorProto.UINT8, [n, blocks, BLOCK // 2],
                                 chunked(n * blocks * BLOCK // 2, CHUNK,
                                         lambda m: np.frombuffer(rng.bytes(m), np.uint8))))
        std = 1.0 / np.sqrt(k * 21.25)
        inits.append(files.write(f"{n_name}.weight_scales", TensorProto.FLOAT16, [n * blocks],
                                 chunked(n * blocks, CHUNK // 4,
                                         lambda m: rng.uniform(0.5 * std, 1.5 * std, m).astype(F16))))
        zp_bytes = n * ((blocks + 1) // 2)
        inits.append(files.write(f"{n_name}.weight_zp", TensorProto.UINT8, [zp_bytes],
                                 chunked(zp_bytes, CHUNK,
                                         lambda m: (rng.integers(7, 10, m, dtype=np.uint8)
                                                    | (rng.integers(7, 10, m, dtype=np.uint8) << 4)))))
        return g.op("MatMulNBits", [x, f"{n_name}.weight_Q4", f"{n_name}.weight_scales", f"{n_name}.weight_zp"],
                    name=f"{n_name}.MatMulNBits", domain="com.microsoft", K=k, N=n, bits=4, block_size=BLOCK)

    def rms(x, n_name):
        return g.op("SimplifiedLayerNormalization", [x, norm_weight(f"{n_name}.weight")], name=n_name, axis=-1,
                    epsilon=1e-5, stash_type=1)

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    h = g.op("Gather", [weight16("model.embed_tokens.weight", [vocab, d], 0.02), "input_ids"],
             name="model.embed_tokens")
    # Causal mask [S, S]: -10000 above the diagonal.
    seq = g.op("Slice", [g.op("Shape", ["input_ids"], name="ids_shape"), g.const("one", [1], np.int64),
                         g.const("two", [2], np.int64)], name="seq_slice")
    square = g.op("Concat", [seq, seq], name="mask_shape", axis=0)
    ones = g.op("ConstantOfShape", [square], name="mask_ones",
                value=helper.make_tensor("one16", TensorProto.FLOAT16, [1], [1.0]))
    upper = g.op("Trilu", [ones, g.const("diagonal_offset", 1, np.int64)], name="mask_trilu", upper=1)
    mask = g.op("Mul", [upper, g.const("mask_value", -10000.0, F16)], name="mask_mul")
    q_shape = g.const("q_shape", [0, 0, heads, hd], np.int64)
    kv_shape = g.const("kv_shape", [0, 0, kv_heads, 1, hd], np.int64)
    repeat = g.const("kv_repeat", [1, 1, 1, heads // kv_heads, 1], np.int64) if kv_heads != heads else None
    model_shape = g.const("model_shape", [0, 0, heads * hd], np.int64)
    inv_sqrt = g.const("inv_sqrt_head_dim", 1.0 / np.sqrt(hd), F16)
    for i in range(layers):
        p = f"model.layers.{i}"
        x = rms(h, f"{p}.input_layernorm")
        q = matmul_nbits(x, d, heads * hd, f"{p}.attn.q_proj")
        k = matmul_nbits(x, d, kv_heads * hd, f"{p}.attn.k_proj")
        v = matmul_nbits(x, d, kv_heads * hd, f"{p}.attn.v_proj")
        q = g.op("Transpose", [g.op("Reshape", [q, q_shape], name=f"{p}.q_reshape")], name=f"{p}.q_transpose",
                 perm=[0, 2, 1, 3])

        def heads_of(t, tag):
            t = g.op("Reshape", [t, kv_shape], name=f"{p}.{tag}_reshape")
            if kv_heads != heads:
                t = g.op("Expand", [t, repeat], name=f"{p}.{tag}_repeat")
            return g.op("Reshape", [t, q_shape], name=f"{p}.{tag}_heads")

        k = g.op("Transpose", [heads_of(k, "k")], name=f"{p}.k_transpose", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [heads_of(v, "v")], name=f"{p}.v_transpose", perm=[0, 2, 1, 3])
        s = g.op("Mul", [g.op("MatMul", [q, k], name=f"{p}.scores"), inv_sqrt], name=f"{p}.scale")
        s = g.op("Softmax", [g.op("Add", [s, mask], name=f"{p}.mask_add")], name=f"{p}.softmax", axis=-1)
        a = g.op("Transpose", [g.op("MatMul", [s, v], name=f"{p}.context")], name=f"{p}.context_transpose",
                 perm=[0, 2, 1, 3])
        a = g.op("Reshape", [a, model_shape], name=f"{p}.context_reshape")
        h = g.op("Add", [h, matmul_nbits(a, heads * hd, d, f"{p}.attn.o_proj")], name=f"{p}.residual_1")
        x = rms(h, f"{p}.post_attention_layernorm")
        gate = matmul_nbits(x, d, ffn, f"{p}.mlp.gate_proj")
        up = matmul_nbits(x, d, ffn, f"{p}.mlp.up_proj")
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], name=f"{p}.mlp.sigmoid")], name=f"{p}.mlp.silu")
        act = g.op("Mul", [act, up], name=f"{p}.mlp.gate_up")
        h = g.op("Add", [h, matmul_nbits(act, ffn, d, f"{p}.mlp.down_proj")], name=f"{p}.residual_2")
    x = rms(h, "model.norm")
    g.op("MatMul", [x, weight16("lm_head.weight", [d, vocab], 0.02)], name="lm_head")
    g.nodes[-1].output[0] = "logits"
    files.close()
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", "sequence", vocab])
    m = g.model([ids], [out], 21, 10, domains=[("com.microsoft", 1)])
    path = os.path.join(out_dir, "model.onnx")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    # No onnx.checker here: SimplifiedLayerNormalization is onnxruntime's operator in the ONNX
    # domain (as exporters of LLMs for onnxruntime write it), which the checker does not know.
    return files.names, len(m.graph.node)


def llm_bytes(name):
    d, layers, heads, kv_heads, hd, ffn, vocab = LLM_SHAPES[name]
    params = layers * (2 * d * heads * hd + 2 * d * kv_heads * hd + 3 * d * ffn)
    return 2 * vocab * d * 2 + params * (BLOCK // 2 + 2 + 0.5) // BLOCK


# ---- the set ------------------------------------------------------------------------------

BUILDERS = {
    "vgg16": vgg16,
    "resnet50": resnet50,
    "resnet50_fp16": lambda: resnet50("resnet50_fp16", F16),
    "resnet50_int8": resnet50_int8,
    "vit_b16": vit_b16,
    "vit_b16_int8": lambda: vit_b16("vit_b16_int8", int8=True),
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_21k": lambda: mobilenet_v2("mobilenet_v2_21k", 21843),
    "mobilenet_v2_10k": lambda: mobilenet_v2("mobilenet_v2_10k", 10000),
    "mobilenet_v2_4k": lambda: mobilenet_v2("mobilenet_v2_4k", 4096),
}
NAMES = list(BUILDERS) + list(LLM_SHAPES)
# Bytes of weights, for the disk check (both storages: twice).
APPROX = {"vgg16": 553e6, "resnet50": 102e6, "resnet50_fp16": 51e6, "resnet50_int8": 26e6, "vit_b16": 346e6,
          "vit_b16_int8": 88e6, "mobilenet_v2": 14e6, "mobilenet_v2_21k": 126e6,
          "mobilenet_v2_10k": 60e6, "mobilenet_v2_4k": 30e6}


def du(folder):
    return sum(p.stat().st_size for p in pathlib.Path(folder).rglob("*") if p.is_file())


def check(path, name):
    """One run of onnxruntime (CPU, default options) on a random input: outputs finite."""
    import onnxruntime as ort

    try:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise SystemExit(f"error: {path}: onnxruntime refuses the model: {str(e).splitlines()[0]}")
    rng = np.random.default_rng(0)
    feeds = {}
    for i in s.get_inputs():
        if i.type == "tensor(int64)":
            feeds[i.name] = rng.integers(0, LLM_SHAPES[name][6], (1, 4), dtype=np.int64)
        else:
            feeds[i.name] = rng.standard_normal([1 if not isinstance(n, int) else n for n in i.shape], np.float32)
    t = time.perf_counter()
    outs = s.run(None, feeds)
    for o, arr in zip(s.get_outputs(), outs):
        if not np.isfinite(arr.astype(np.float32)).all():
            raise SystemExit(f"error: {path}: output {o.name} has non-finite values")
    return outs[0].shape, time.perf_counter() - t


def build(name, out, do_check, check_big):
    final = out / name
    tmp = out / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.perf_counter()
    if name in LLM_SHAPES:
        (tmp / "external").mkdir(parents=True)
        files, nodes = llm(name, tmp / "external")
        storages = ["external"]
        note = f"{nodes} nodes, {len(files)} data files"
    else:
        m = BUILDERS[name]()
        note = f"{len(m.graph.initializer)} initializers, {len(m.graph.node)} nodes"
        (tmp / "single").mkdir(parents=True)
        (tmp / "external").mkdir()
        onnx.save(m, str(tmp / "single" / "model.onnx"))
        onnx.save(m, str(tmp / "external" / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=1024)
        del m
        # By path (the weights stay on disk) and after saving: checking the model in memory
        # would hold another copy of it.
        onnx.checker.check_model(str(tmp / "external" / "model.onnx"), full_check=True)
        storages = ["single", "external"]
    gen = time.perf_counter() - t0
    sizes = ", ".join(f"{s} {du(tmp / s) / MIB:.1f} MiB" for s in storages)
    print(f"{name}: {sizes} ({note}), generated in {gen:.1f} s", flush=True)
    if do_check and (name != "llm_8g" or check_big):
        for s in storages:
            shape, secs = check(tmp / s / "model.onnx", name)
            print(f"  {s}: onnxruntime ran it, output {list(shape)} finite ({secs:.2f} s)", flush=True)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench-data" / "session-models")
    ap.add_argument("--only", help=f"comma-separated names among {', '.join(NAMES)}")
    ap.add_argument("--no-check", action="store_true", help="do not run the models in onnxruntime")
    ap.add_argument("--check-big", action="store_true", help="also run llm_8g once (needs about 10 GiB of memory)")
    ap.add_argument("--list", action="store_true", help="print the names and exit")
    a = ap.parse_args()
    if a.list:
        print("\n".join(NAMES))
        return
    names = NAMES
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        bad = [n for n in names if n not in NAMES]
        if bad or not names:
            raise SystemExit(f"error: --only: unknown model {', '.join(bad) or '(none)'}; known: {', '.join(NAMES)}")
    a.out.mkdir(parents=True, exist_ok=True)
    need = sum(llm_bytes(n) if n in LLM_SHAPES else 2 * APPROX[n] for n in names)
    free = shutil.disk_usage(a.out).free
    if free < need * 1.05 + GIB:
        raise SystemExit(f"error: {a.out}: {free / GIB:.1f} GiB free, the models need about {need / GIB:.1f} GiB")
    t0 = time.perf_counter()
    for n in names:
        build(n, a.out, not a.no_check, a.check_big)
    print(f"all: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
