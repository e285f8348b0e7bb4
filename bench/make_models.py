#!/usr/bin/env python3
"""Generates the benchmark models for bench/run.sh (fixed seed, numpy + onnx).

  single/model.onnx   a transformer-like fp32 model, every weight in `raw_data`
                      (token embedding via Gather, per block Q/K/V/O MatMul weights,
                      FFN Gemm weights + biases, LayerNormalization scale/bias),
                      about 1 GiB by default.
  external/model.onnx the same kind of graph, bigger, with every weight in external
                      data: a few side files next to model.onnx, written by hand in
                      chunks (offsets aligned to 4 KiB), about 3.3 GiB by default.

The graphs are valid ONNX (onnx.checker passes, shape inference included) but are
not meant to be run. Usage:

  python3 bench/make_models.py [--out bench-data] [--single-blocks 18] [--single-vocab 32000]
                               [--ext-blocks 16] [--only single|external]
"""

import argparse
import os
import pathlib
import shutil
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240601
GIB = 1 << 30


def normal(rng, shape, scale=0.02):
    a = rng.standard_normal(size=shape, dtype=np.float32)
    a *= np.float32(scale)
    return a


def graph_nodes(prefix_inputs, blocks, d, ffn):
    """Nodes and the (name, shape, role) list of weights of a decoder-only stack."""
    nodes = []
    weights = []  # (name, shape, kind) kind: "w" normal weights, "b" zeros-ish bias, "g" ones

    def w(name, shape, kind="w"):
        weights.append((name, shape, kind))
        return name

    nodes.append(helper.make_node("Gather", [w("tok_embedding", None, "emb"), "input_ids"], ["h0"], name="embed"))
    h = "h0"
    for i in range(blocks):
        p = f"blk{i}"
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                [h, w(f"{p}.ln1.scale", (d,), "g"), w(f"{p}.ln1.bias", (d,), "b")],
                [f"{p}.x1"],
                name=f"{p}.ln1",
                axis=-1,
            )
        )
        for proj in ("q", "k", "v"):
            nodes.append(
                helper.make_node(
                    "MatMul", [f"{p}.x1", w(f"{p}.attn.{proj}.weight", (d, d))], [f"{p}.{proj}"], name=f"{p}.{proj}"
                )
            )
        # Stand-in for attention: q * sigmoid(k) + v (keeps the graph small and valid).
        nodes.append(helper.make_node("Sigmoid", [f"{p}.k"], [f"{p}.ks"], name=f"{p}.sig"))
        nodes.append(helper.make_node("Mul", [f"{p}.q", f"{p}.ks"], [f"{p}.qk"], name=f"{p}.mul"))
        nodes.append(helper.make_node("Add", [f"{p}.qk", f"{p}.v"], [f"{p}.att"], name=f"{p}.attadd"))
        nodes.append(
            helper.make_node("MatMul", [f"{p}.att", w(f"{p}.attn.o.weight", (d, d))], [f"{p}.o"], name=f"{p}.o")
        )
        nodes.append(helper.make_node("Add", [h, f"{p}.o"], [f"{p}.r1"], name=f"{p}.res1"))
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                [f"{p}.r1", w(f"{p}.ln2.scale", (d,), "g"), w(f"{p}.ln2.bias", (d,), "b")],
                [f"{p}.x2"],
                name=f"{p}.ln2",
                axis=-1,
            )
        )
        nodes.append(
            helper.make_node(
                "Gemm",
                [f"{p}.x2", w(f"{p}.ffn.up.weight", (ffn, d)), w(f"{p}.ffn.up.bias", (ffn,), "b")],
                [f"{p}.u"],
                name=f"{p}.up",
                transB=1,
            )
        )
        nodes.append(helper.make_node("Relu", [f"{p}.u"], [f"{p}.ur"], name=f"{p}.relu"))
        nodes.append(
            helper.make_node(
                "Gemm",
                [f"{p}.ur", w(f"{p}.ffn.down.weight", (d, ffn)), w(f"{p}.ffn.down.bias", (d,), "b")],
                [f"{p}.dn"],
                name=f"{p}.down",
                transB=1,
            )
        )
        nodes.append(helper.make_node("Add", [f"{p}.r1", f"{p}.dn"], [f"h{i + 1}"], name=f"{p}.res2"))
        h = f"h{i + 1}"
    nodes.append(helper.make_node("Identity", [h], ["hidden"], name="out"))
    return nodes, weights


def make_graph(nodes, inits, name):
    # Rank-1 token ids: Gather gives [seq, d], which MatMul/Gemm (2-D) accept.
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["seq"])
    out = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["seq", None])
    return helper.make_graph(nodes, name, [ids], [out], initializer=inits)


def make_model(graph):
    m = helper.make_model(graph, producer_name="onnx-protect-bench", opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def resolve_shape(shape, vocab, d):
    return (vocab, d) if shape is None else shape


def fill(rng, kind, shape):
    if kind == "g":
        return np.ones(shape, dtype=np.float32)
    if kind == "b":
        return normal(rng, shape, 0.01)
    return normal(rng, shape)


def build_single(out_dir, blocks, d, ffn, vocab):
    rng = np.random.default_rng(SEED)
    nodes, weights = graph_nodes(None, blocks, d, ffn)
    inits = []
    for name, shape, kind in weights:
        shape = resolve_shape(shape, vocab, d)
        arr = fill(rng, kind, shape)
        t = numpy_helper.from_array(arr, name)  # raw_data
        del arr
        inits.append(t)
    model = make_model(make_graph(nodes, inits, "bench_single"))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def build_external(out_dir, blocks, d, ffn, vocab, files, chunk_elems=1 << 24):
    """Every weight in external data; weights spread over `files` side files."""
    rng = np.random.default_rng(SEED + 1)
    nodes, weights = graph_nodes(None, blocks, d, ffn)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    shapes = [(n, resolve_shape(s, vocab, d), k) for n, s, k in weights]
    total = sum(int(np.prod(s)) * 4 for _, s, _ in shapes)
    per_file = total / files
    inits = []
    fi, written, fh = 0, 0, None
    file_bytes = 0
    for name, shape, kind in shapes:
        nbytes = int(np.prod(shape)) * 4
        if fh is None or (file_bytes >= per_file and fi < files):
            if fh is not None:
                fh.close()
            loc = f"weights_{fi}.bin"
            fh = open(os.path.join(out_dir, loc), "wb")
            fi += 1
            file_bytes = 0
        pad = (-fh.tell()) % 4096
        if pad:
            fh.write(b"\0" * pad)
        offset = fh.tell()
        left = int(np.prod(shape))
        while left:
            n = min(left, chunk_elems)
            fh.write(fill(rng, kind, (n,)).tobytes())
            left -= n
        file_bytes = fh.tell()
        written += nbytes
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", str(offset)), ("length", str(nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
    fh.close()
    model = make_model(make_graph(nodes, inits, "bench_external"))
    path = os.path.join(out_dir, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    onnx.checker.check_model(path, full_check=False)
    return path, fi


def du(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "bench-data"))
    ap.add_argument("--only", choices=["single", "external"])
    ap.add_argument("--single-blocks", type=int, default=18, help="d=1024, ffn=4096, vocab=32000: ~1 GiB at 18")
    ap.add_argument("--single-vocab", type=int, default=32000, help="rows of the token embedding of single/")
    ap.add_argument("--ext-blocks", type=int, default=16, help="d=2048, ffn=8192, vocab=32000: ~3.3 GiB at 16")
    ap.add_argument("--ext-files", type=int, default=4)
    args = ap.parse_args()

    need = 0
    if args.only in (None, "single"):
        need += (args.single_vocab * 1024 + args.single_blocks * (4 * 1024 * 1024 + 2 * 4096 * 1024)) * 4
    if args.only in (None, "external"):
        need += (32000 * 2048 + args.ext_blocks * (4 * 2048 * 2048 + 2 * 8192 * 2048)) * 4
    os.makedirs(args.out, exist_ok=True)
    free = shutil.disk_usage(args.out).free
    # run.sh writes several outputs per model; ask for 6x the inputs.
    if free < 6 * need:
        print(f"warning: {free / GIB:.1f} GiB free under {args.out}, run.sh wants ~{6 * need / GIB:.1f} GiB;"
              " use smaller --single-blocks/--ext-blocks", file=sys.stderr)

    if args.only in (None, "single"):
        t0 = time.time()
        p = build_single(os.path.join(args.out, "single"), args.single_blocks, 1024, 4096, args.single_vocab)
        print(f"{p}: {du(p) / GIB:.3f} GiB ({du(p)} bytes) in {time.time() - t0:.1f} s")
    if args.only in (None, "external"):
        t0 = time.time()
        p, nfiles = build_external(os.path.join(args.out, "external"), args.ext_blocks, 2048, 8192, 32000,
                                   args.ext_files)
        d = os.path.dirname(p)
        print(f"{d}/: {du(d) / GIB:.3f} GiB in {nfiles} side files + model.onnx ({du(p)} bytes)"
              f" in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
