#!/usr/bin/env python3
"""Fine-tuning study: how much does a stolen protected model still save an attacker
who has 10% of the training data?

For each zoo model and policy, the model is encrypted with the CLI and the public
positions are read back from it (`onnx-protect inspect --json`). The attacker then

* **fine-tunes** the stolen model: every encrypted element is reset as init-fill
  does (normalisation scales and running variances 1, their biases and running means
  0, `Mul` scales 1, other elements drawn from N(0, σ of the tensor's clear elements),
  or PyTorch's default spread when no element is clear), then every parameter is
  trained on the 10% subset;
* **trains from scratch** the same architecture (the graph of the ONNX file, every
  parameter drawn as PyTorch initialises its layers) on the same subset with the same
  budget.

Both use AdamW with a one-cycle schedule for the same number of steps, at several
peak learning rates; each side keeps its best test accuracy over the learning rates
(the attacker's best case on both sides). The *gap* is fine-tuned minus scratch, in
points: what the stolen copy is worth. The model runs in PyTorch through a small
interpreter of the ONNX graph (the operators of the zoo), checked against
onnxruntime before any training.

Needs torch (not part of the CLI or its tests). Deterministic for a given machine:
seeds are fixed and PyTorch runs single-threaded with deterministic kernels.

    python3 scripts/finetune_study.py [--bin target/release/onnx-protect]
        [--models digits/cnn,...] [--model-file NAME=PATH]... [--policies NAME,...] [--json results.json]
    python3 scripts/finetune_study.py --secret C [--models ...]

With `--secret C` the policies are replaced by two encryptions of C of every weight's rows
by L1 in `dp` (`fp` for weights whose rows are under 16 elements), as
scripts/eval_secret_positions.py makes them: with public positions the attacker resets
exactly the encrypted elements; with `--positions secret` the attacker starts from the
stored file and resets what it must guess, the 2·C·n rows of largest stored L1 of every
encrypted tensor (the candidate pool), then fine-tunes.
"""
import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("this study needs PyTorch: pip install torch")
import onnx
from onnx import numpy_helper
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import eval_policies as ep  # noqa: E402

ROOT = ep.ROOT
SEED = 0
SHARE = 0.10
STEPS = 300
BATCH = 32
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
WD = 1e-4


# ---------------------------------------------------------------- ONNX in PyTorch

def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Graph(torch.nn.Module):
    """Runs an ONNX graph with PyTorch operators. Floating-point initializers of more
    than one element are parameters, BatchNormalization running statistics buffers,
    everything else constant."""

    def __init__(self, model):
        super().__init__()
        g = model.graph
        self.graph = g
        self.key = {}
        self.params = torch.nn.ParameterDict()
        self.stats = {}
        self.consts = {}
        stats = {n.input[i] for n in g.node if n.op_type == "BatchNormalization" for i in (3, 4)}
        for k, t in enumerate(g.initializer):
            a = numpy_helper.to_array(t).copy()
            if a.dtype.kind == "f":
                a = a.astype(np.float32)
            tt = torch.from_numpy(a)
            if t.name in stats:
                self.register_buffer(f"s{k}", tt)
                self.stats[t.name] = f"s{k}"
            elif a.dtype.kind == "f" and a.size > 1:
                self.params[f"p{k}"] = torch.nn.Parameter(tt)
                self.key[t.name] = f"p{k}"
            else:
                self.consts[t.name] = tt
        self.inputs = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]

    def value(self, name):
        if name in self.key:
            return self.params[self.key[name]]
        if name in self.stats:
            return getattr(self, self.stats[name])
        return self.consts[name]

    def tensors(self):
        """name → tensor for every float initializer (parameters and statistics)."""
        out = {n: self.params[k] for n, k in self.key.items()}
        out.update({n: getattr(self, k) for n, k in self.stats.items()})
        return out

    def forward(self, x):
        env = {self.inputs[0]: x}

        def get(n):
            return env[n] if n in env else self.value(n)

        for node in self.graph.node:
            ins = [get(i) if i else None for i in node.input]
            outs = run_op(node, ins, attrs(node), self.training)
            for name, v in zip(node.output, outs):
                if name:
                    env[name] = v
        return env[self.graph.output[0].name]


def ints(t):
    return [int(v) for v in t.reshape(-1).tolist()]


def conv(x, w, b, a):
    nd = w.dim() - 2
    pads = a.get("pads", [0] * (2 * nd))
    if any(p != q for p, q in zip(pads[:nd], pads[nd:])):
        raise NotImplementedError("asymmetric Conv padding")
    f = {1: F.conv1d, 2: F.conv2d}[nd]
    return f(x, w, b, stride=a.get("strides", [1] * nd), padding=pads[:nd],
             dilation=a.get("dilations", [1] * nd), groups=a.get("group", 1))


def recurrent(kind, ins, a):
    x, w, r, b = ins[0], ins[1], ins[2], ins[3] if len(ins) > 3 else None
    if a.get("direction", b"forward") not in (b"forward", "forward") or a.get("layout", 0) != 0:
        raise NotImplementedError("only forward, layout 0 recurrent layers")
    hs = a["hidden_size"]
    seq, batch = x.shape[0], x.shape[1]
    h = ins[5][0] if len(ins) > 5 and ins[5] is not None else x.new_zeros(batch, hs)
    c = ins[6][0] if len(ins) > 6 and ins[6] is not None else x.new_zeros(batch, hs)
    w, r = w[0], r[0]
    g = 4 if kind == "LSTM" else 3
    wb, rb = (b[0][: g * hs], b[0][g * hs:]) if b is not None else (0, 0)
    ys = []
    for t in range(seq):
        xw = x[t] @ w.t() + wb
        if kind == "LSTM":
            z = xw + h @ r.t() + rb
            i, o, f, cc = z.split(hs, dim=1)
            i, o, f, cc = torch.sigmoid(i), torch.sigmoid(o), torch.sigmoid(f), torch.tanh(cc)
            c = f * c + i * cc
            h = o * torch.tanh(c)
        else:
            xz, xr, xh = xw.split(hs, dim=1)
            rw = r.split(hs, dim=0)
            rbs = rb.split(hs) if isinstance(rb, torch.Tensor) else (0, 0, 0)
            zt = torch.sigmoid(xz + h @ rw[0].t() + rbs[0])
            rt = torch.sigmoid(xr + h @ rw[1].t() + rbs[1])
            if a.get("linear_before_reset", 0):
                ht = torch.tanh(xh + rt * (h @ rw[2].t() + rbs[2]))
            else:
                ht = torch.tanh(xh + (rt * h) @ rw[2].t() + rbs[2])
            h = (1 - zt) * ht + zt * h
        ys.append(h)
    y = torch.stack(ys).unsqueeze(1)
    return [y, h.unsqueeze(0), c.unsqueeze(0)]


def run_op(node, ins, a, training):
    op = node.op_type
    if op == "Conv":
        return [conv(ins[0], ins[1], ins[2] if len(ins) > 2 else None, a)]
    if op == "Gemm":
        A, B = ins[0], ins[1]
        A = A.t() if a.get("transA", 0) else A
        B = B.t() if a.get("transB", 0) else B
        y = a.get("alpha", 1.0) * (A @ B)
        if len(ins) > 2 and ins[2] is not None:
            y = y + a.get("beta", 1.0) * ins[2]
        return [y]
    if op == "MatMul":
        return [ins[0] @ ins[1]]
    if op in ("Add", "Sub", "Mul", "Div", "Pow"):
        f = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow}[op]
        return [f(ins[0], ins[1])]
    if op == "Relu":
        return [F.relu(ins[0])]
    if op == "Gelu":
        return [F.gelu(ins[0], approximate=a.get("approximate", b"none").decode() if isinstance(
            a.get("approximate", b"none"), bytes) else a.get("approximate", "none"))]
    if op == "Softmax":
        return [F.softmax(ins[0], dim=a.get("axis", -1))]
    if op == "LayerNormalization":
        axis = a.get("axis", -1)
        x = ins[0]
        shape = x.shape[axis:] if axis >= 0 else x.shape[axis:]
        return [F.layer_norm(x, shape, ins[1], ins[2] if len(ins) > 2 else None, a.get("epsilon", 1e-5))]
    if op == "BatchNormalization":
        return [F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], training=training, momentum=0.1,
                             eps=a.get("epsilon", 1e-5))]
    if op == "MaxPool":
        k = a["kernel_shape"]
        nd = len(k)
        pads = a.get("pads", [0] * (2 * nd))
        f = {1: F.max_pool1d, 2: F.max_pool2d}[nd]
        return [f(ins[0], k, stride=a.get("strides", k), padding=pads[:nd], ceil_mode=bool(a.get("ceil_mode", 0)))]
    if op == "ReduceMean":
        axes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        return [ins[0].mean(dim=axes, keepdim=keep) if axes is not None else ins[0].mean()]
    if op == "Reshape":
        x, shape = ins[0], ints(ins[1])
        shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
        return [x.reshape(shape)]
    if op == "Flatten":
        ax = a.get("axis", 1)
        return [ins[0].reshape(int(np.prod(ins[0].shape[:ax])), -1)]
    if op == "Transpose":
        return [ins[0].permute(*a.get("perm", list(range(ins[0].dim()))[::-1]))]
    if op == "Shape":
        shape = list(ins[0].shape)
        start, end = a.get("start", 0), a.get("end", len(shape))
        return [torch.tensor(shape[start:end], dtype=torch.int64)]
    if op == "Slice":
        x = ins[0]
        starts, ends = ints(ins[1]), ints(ins[2])
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        idx = [slice(None)] * x.dim()
        for s, e, ax, st in zip(starts, ends, axes, steps):
            n = x.shape[ax]
            s = max(min(s + n if s < 0 else s, n), 0)
            e = max(min(e + n if e < 0 else e, n), 0)
            idx[ax] = slice(s, e, st)
        return [x[tuple(idx)]]
    if op == "Concat":
        return [torch.cat([t for t in ins if t is not None], dim=a["axis"])]
    if op == "Gather":
        ax = a.get("axis", 0)
        i = ins[1]
        if i.dim() == 0:
            return [ins[0].select(ax, int(i))]
        return [torch.index_select(ins[0], ax, i.reshape(-1)).reshape(
            ins[0].shape[:ax] + i.shape + ins[0].shape[ax + 1:])]
    if op == "Squeeze":
        axes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("axes")
        x = ins[0]
        for ax in sorted([ax % x.dim() for ax in axes], reverse=True) if axes else []:
            x = x.squeeze(ax)
        return [x if axes else ins[0].squeeze()]
    if op == "Unsqueeze":
        axes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("axes")
        x = ins[0]
        rank = x.dim() + len(axes)
        for ax in sorted(ax % rank for ax in axes):
            x = x.unsqueeze(ax)
        return [x]
    if op == "Expand":
        shape = ints(ins[1])
        x = ins[0]
        out = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
        return [x.expand(out)]
    if op in ("Identity", "Cast"):
        x = ins[0]
        if op == "Cast" and a["to"] == onnx.TensorProto.FLOAT:
            x = x.float()
        elif op == "Cast" and a["to"] == onnx.TensorProto.INT64:
            x = x.long()
        return [x]
    if op == "Constant":
        return [torch.from_numpy(numpy_helper.to_array(a["value"]).copy())]
    if op in ("LSTM", "GRU"):
        return recurrent(op, ins, a)
    raise NotImplementedError(op)


# ---------------------------------------------------------------- attacker and scratch

def consumers(model):
    out = {}
    for n in model.graph.node:
        for i, x in enumerate(n.input):
            out.setdefault(x, []).append((n.op_type, i, n))
    return out


def resolved_users(model):
    """name → [(op, input index)] of every constant, followed through the pass-through
    operators the CLI's discovery follows."""
    passthrough = {"Cast", "Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split",
                   "Expand", "Tile", "Concat"}
    cons = consumers(model)
    out = {}
    for t in model.graph.initializer:
        seen, stack, users = set(), [t.name], []
        while stack:
            v = stack.pop()
            for op, i, n in cons.get(v, []):
                if op in passthrough and (op == "Concat" or i == 0):
                    if id(n) not in seen:
                        seen.add(id(n))
                        stack.extend(n.output)
                else:
                    users.append((op, i))
        out[t.name] = users
    return out


NORM_OPS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"}


def init_kind(users, shape):
    """('const', v) or ('normal', None) or ('fan', std) as the CLI's init-fill decides."""
    for op, i in users:
        if op in NORM_OPS:
            return ("const", 1.0 if i in (1, 4) else 0.0)
    if any(op in ("Mul", "Div") for op, _ in users):
        return ("const", 1.0)
    first = users[0] if users else ("", 0)
    if first[0] in ("LSTM", "GRU", "RNN") and first[1] in (1, 2):
        gates = 4 if first[0] == "LSTM" else 3 if first[0] == "GRU" else 1
        h = shape[1] // gates
        return ("fan", 1 / math.sqrt(3 * max(h, 1)))
    if first[0] in ("Conv", "Gemm") and first[1] == 1 and len(shape) >= 2:
        return ("fan", 1 / math.sqrt(3 * max(int(np.prod(shape[1:])), 1)))
    if first[0] == "MatMul" and len(shape) >= 2:
        return ("fan", 1 / math.sqrt(3 * max(shape[-2], 1)))
    wide = sum(1 for d in shape if d > 1)
    if first[0] == "Add" and wide >= 2:
        return ("fan", 0.02)
    return ("const", 0.0)


def attacker_start(model, masks, gen):
    """The stolen model with every encrypted element reset (see the module docs)."""
    m = Graph(model)
    users = resolved_users(model)
    with torch.no_grad():
        for name, t in m.tensors().items():
            mask = masks.get(name)
            if mask is None or not mask.any():
                continue
            mk = torch.from_numpy(mask.reshape(tuple(t.shape)))
            kind, v = init_kind(users.get(name, []), list(t.shape))
            clear = t[~mk]
            if kind == "const":
                fill = torch.full_like(t, v)
            else:
                std = float(clear.std(unbiased=False)) if clear.numel() >= 2 else v
                fill = torch.randn(t.shape, generator=gen) * std
            t.copy_(torch.where(mk, fill, t))
    return m


def scratch(model, gen):
    """The same graph with every parameter drawn as PyTorch initialises its layers."""
    m = Graph(model)
    users = resolved_users(model)
    # Linear biases added after MatMul: the fan-in of the MatMul before them.
    fan_of_bias = {}
    cons = consumers(model)
    for n in model.graph.node:
        if n.op_type == "MatMul":
            w = next((t for t in model.graph.initializer if t.name == n.input[1]), None)
            for op, i, add in cons.get(n.output[0], []):
                if op == "Add" and w is not None:
                    fan_of_bias[add.input[1]] = w.dims[0]
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2:
            w = next((t for t in model.graph.initializer if t.name == n.input[1]), None)
            if w is not None:
                fan_of_bias[n.input[2]] = int(np.prod(w.dims[1:]))
    with torch.no_grad():
        for name, t in m.tensors().items():
            shape = list(t.shape)
            kind, v = init_kind(users.get(name, []), shape)
            if name in fan_of_bias:
                bound = 1 / math.sqrt(fan_of_bias[name])
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * bound)
            elif kind == "const":
                t.fill_(v)
            elif users.get(name) and users[name][0][0] in ("LSTM", "GRU") and users[name][0][1] == 3:
                h = shape[-1] // (8 if users[name][0][0] == "LSTM" else 6)
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) / math.sqrt(h))
            elif v == 0.02:
                t.copy_(torch.randn(t.shape, generator=gen).clamp(-2, 2) * 0.02)
            else:
                # U(±√3·σ): PyTorch's kaiming-uniform bound 1/√fan_in for σ = 1/√(3·fan_in).
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * math.sqrt(3) * v)
    return m


def accuracy(m, x, y):
    m.eval()
    with torch.no_grad():
        return float((m(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train(m, x, y, lr):
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=WD)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=STEPS, pct_start=0.15)
    m.train()
    step = 0
    while step < STEPS:
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), BATCH):
            if step == STEPS:
                break
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(m(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return m


def subset(x, y):
    """A stratified 10% of the training split (at least one sample per class), seeded."""
    rng = np.random.default_rng(SEED)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(SHARE * len(idx))))
        keep.extend(rng.choice(idx, k, replace=False).tolist())
    keep = np.sort(np.array(keep))
    return x[keep], y[keep]


def masks_of(binary, protected):
    """name → boolean element mask of the encrypted spans (float32 tensors)."""
    info = json.loads(ep.cli(binary, "inspect", protected, "--json"))
    out = {}
    for t in info["protection"]["tensors"]:
        mask = np.zeros(t["nbytes"] // 4, dtype=bool)
        for a, b in t["spans"]:
            mask[a // 4:(b + 3) // 4] = True
        out[t["name"]] = mask | out.get(t["name"], np.zeros_like(mask))
    return out


def check_interpreter(model_path, x):
    m = Graph(onnx.load(model_path))
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    m.eval()
    with torch.no_grad():
        got = m(torch.from_numpy(x)).numpy()
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    if err > 1e-4:
        sys.exit(f"{model_path}: the PyTorch interpreter differs from onnxruntime by {err}")


def best_over_lrs(make, x, y, xt, yt):
    accs = {}
    for lr in LRS:
        m = train(make(), x, y, lr)
        accs[lr] = accuracy(m, xt, yt)
    return max(accs.values()), accs


def secret_positions(args, model, src, tmp, env, data, scratch_best, model_name):
    """Fine-tuning gap with public and with secret positions (see `--secret`)."""
    import eval_secret_positions as sp
    x, y, xt, yt = data
    out = {}
    for secret in (False, True):
        stored, truth = sp.encrypt(args.bin, src, "dp", args.secret, secret, tmp, env)
        rows = sp.pool_guess(stored, truth, args.secret) if secret else truth
        start_model = onnx.load(tmp / "p.onnx") if secret else model
        masks = {}
        for t in start_model.graph.initializer:
            if t.name in rows and t.data_type == 1:
                shape = tuple(t.dims) if t.dims else (1,)
                r = rows[t.name]
                full = np.broadcast_to(r.reshape(-1, *([1] * (len(shape) - 1))), shape) if len(shape) >= 2 \
                    else np.ones(shape, bool)
                masks[t.name] = np.ascontiguousarray(full).reshape(-1)
        ft_best, ft_accs = best_over_lrs(
            lambda: attacker_start(start_model, masks, torch.Generator().manual_seed(SEED)), x, y, xt, yt)
        start = accuracy(attacker_start(start_model, masks, torch.Generator().manual_seed(SEED)), xt, yt)
        label = "secret" if secret else "public"
        out[label] = {"start": start, "finetuned": ft_best, "finetuned_by_lr": ft_accs, "gap": ft_best - scratch_best}
        print(f"{model_name:18} dp {args.secret:.2f} {label:7} start {100 * start:5.1f}  "
              f"fine-tuned {100 * ft_best:5.1f}  gap {100 * (ft_best - scratch_best):+5.1f}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "release" / "onnx-protect")))
    ap.add_argument("--models", help="comma-separated zoo models (default: all, or none with --model-file)")
    ap.add_argument("--model-file", action="append", default=[], metavar="NAME=PATH",
                    help="a model outside the zoo; NAME's first part names its data set (digits/deep-cnn=FILE)")
    ap.add_argument("--policies", default="default,1",
                    help="comma-separated: default (built-in), old-default, or family points (last+first+small+0.1)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--secret", type=float, help="compare public and secret positions at this share (dp)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    env = dict(os.environ, ONNXP_EVAL_KEY=ep.KEY_HEX)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        files = dict(f.split("=", 1) for f in args.model_file)
        names = args.models.split(",") if args.models else ([] if files else ep.MODELS)
        for model_name in names + list(files):
            src = pathlib.Path(files[model_name]) if model_name in files else ep.ZOO / f"{model_name}.onnx"
            test_x, test_y, train_x = ep.data(model_name)
            train_y = train_x.with_name("train_y.npy")
            xt, yt = np.load(test_x), np.load(test_y)
            x, y = subset(np.load(train_x), np.load(train_y))
            check_interpreter(src, xt[:64])
            model = onnx.load(src)
            full = accuracy(Graph(model), xt, yt)
            scratch_best, scratch_accs = best_over_lrs(
                lambda: scratch(model, torch.Generator().manual_seed(SEED)), x, y, xt, yt)
            results[model_name] = {"original": full, "subset": len(y), "scratch": scratch_best,
                                   "scratch_by_lr": scratch_accs, "policies": {}}
            print(f"{model_name:18} original {100 * full:5.1f}  scratch on {len(y)} samples "
                  f"{100 * scratch_best:5.1f}", flush=True)
            if args.secret is not None:
                results[model_name]["secret"] = secret_positions(
                    args, model, src, tmp, env, (x, y, xt, yt), scratch_best, model_name)
                continue
            for name in args.policies.split(","):
                enc = tmp / "p.onnx"
                cmd = ["encrypt", src, "-o", enc, "--key-env", "ONNXP_EVAL_KEY", "-q", "--force"]
                if name != "default":
                    pol = tmp / "policy.toml"
                    pol.write_text(ep.OLD_DEFAULT if name == "old-default" else ep.family_toml(name))
                    cmd += ["--policy", pol]
                ep.cli(args.bin, *cmd, env=env)
                masks = masks_of(args.bin, enc)
                share = sum(int(m.sum()) for m in masks.values()) * 4 / sum(
                    numpy_helper.to_array(t).size * 4 for t in model.graph.initializer if t.data_type == 1)
                ft_best, ft_accs = best_over_lrs(
                    lambda: attacker_start(model, masks, torch.Generator().manual_seed(SEED)), x, y, xt, yt)
                start = accuracy(attacker_start(model, masks, torch.Generator().manual_seed(SEED)), xt, yt)
                results[model_name]["policies"][name] = {
                    "share": share, "start": start, "finetuned": ft_best, "finetuned_by_lr": ft_accs,
                    "gap": ft_best - scratch_best}
                print(f"{model_name:18} {name:14} share {100 * share:5.1f}%  start {100 * start:5.1f}  "
                      f"fine-tuned {100 * ft_best:5.1f}  gap {100 * (ft_best - scratch_best):+5.1f}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
