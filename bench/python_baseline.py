#!/usr/bin/env python3
"""The "python onnx.load + XOR + onnx.save" baseline of bench/run.sh.

What a user would write without onnx-protect: load the model with `onnx.load`,
XOR the same selection of weight bytes with a keystream in numpy, save it with
`onnx.save`. The selection mirrors onnx-protect's built-in policy for the
initializers used by MatMul, Gemm and Gather (all their initializer inputs, so
Gemm biases too; LayerNormalization scale/bias, well under 0.1% of the bytes,
are left out): split along the first dimension into n rows, choose
k = min(n, max(1, ceil(c*n))) rows at positions floor(j*n/k), j = 0..k-1.

The keystream is AES-256-CTR from `cryptography` (fixed benchmark key, one
nonce per tensor) when it is installed, numpy random bytes otherwise; in `fp`
mode it is ANDed with the fp32 sign+mantissa mask [FF FF 7F 80] like
onnx-protect's format-preserving mode. There is no MAC and no manifest, so this
is a lower bound on what a Python tool doing the same job would cost.

  python3 bench/python_baseline.py IN.onnx OUT.onnx [--coefficient 0.25] [--mode fp|ctr]
"""

import argparse
import math

import numpy as np
import onnx

try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    HAVE_AES = True
except ImportError:  # pragma: no cover
    HAVE_AES = False

KEY = bytes(range(32))
FP32_MASK = np.array([0xFF, 0xFF, 0x7F, 0x80], dtype=np.uint8)
OPS = ("MatMul", "Gemm", "Gather")


def keystream(stream_id, n, rng):
    if HAVE_AES:
        nonce = stream_id.to_bytes(16, "big")
        enc = Cipher(algorithms.AES(KEY), modes.CTR(nonce)).encryptor()
        return np.frombuffer(enc.update(bytes(n)), dtype=np.uint8)
    return rng.integers(0, 256, size=n, dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--coefficient", type=float, default=0.25)
    ap.add_argument("--mode", choices=["fp", "ctr"], default="fp")
    args = ap.parse_args()

    model = onnx.load(args.input)
    inits = {t.name: t for t in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type in OPS:
            for name in node.input:
                if name in inits and name not in chosen:
                    chosen.append(name)

    rng = np.random.default_rng(0)
    total = 0
    for sid, name in enumerate(chosen):
        t = inits[name]
        if t.data_type != onnx.TensorProto.FLOAT or not t.raw_data:
            continue
        n = t.dims[0] if len(t.dims) else 1
        buf = np.frombuffer(t.raw_data, dtype=np.uint8).copy()
        rows = buf.reshape(n, -1)
        k = min(n, max(1, math.ceil(args.coefficient * n))) if args.coefficient > 0 else 0
        if k == 0:
            continue
        idx = (np.arange(k, dtype=np.int64) * n) // k
        ks = keystream(sid, k * rows.shape[1], rng).reshape(k, rows.shape[1])
        if args.mode == "fp":
            ks = ks & np.tile(FP32_MASK, rows.shape[1] // 4)
        rows[idx] ^= ks
        total += ks.size
        t.raw_data = buf.tobytes()
    onnx.save(model, args.output)
    print(f"{len(chosen)} tensors, {total} bytes XORed ({'AES-CTR' if HAVE_AES else 'numpy random'} keystream)")


if __name__ == "__main__":
    main()
