#!/usr/bin/env python3
"""A deeper CNN on the digits data, whose first and last layers are a small share of its
weights: the case the built-in policy (first and last layer whole) was not measured on
with the zoo models.

Six 3x3 convolutions with batch normalisation (1 -> 8 -> 16 -> 32 -> 32 -> 64 -> 64
channels, two 2x2 max-pools) and a linear head, trained on fixtures/digits/train_x.npy
(Adam, 60 epochs, seed 0, one thread) and exported with the TorchScript exporter (opset
17, eval mode, so each batch normalisation is folded into its convolution). The first
convolution holds 80 of its 73,000 parameters, the head 2,570.

    python3 scripts/make_deep_cnn.py [--out bench-data/deep-cnn/digits-deep-cnn.onnx]

Needs torch. Then protect it and run the training attacks of `onnx_protect.assess` on it
(docs/protection.md#training-attacks).
"""
import argparse
import os
import pathlib

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "fixtures" / "digits"


def net():
    layers, c = [], 1
    for i, width in enumerate((8, 16, 32, 32, 64, 64)):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i in (2, 4):
            layers.append(nn.MaxPool2d(2))
        c = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 2 * 2, 10))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench-data" / "deep-cnn" / "digits-deep-cnn.onnx")
    ap.add_argument("--epochs", type=int, default=60)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.from_numpy(np.load(DIGITS / "train_x.npy"))
    y = torch.from_numpy(np.load(DIGITS / "train_y.npy"))
    xt = torch.from_numpy(np.load(DIGITS / "test_x.npy"))
    yt = np.load(DIGITS / "test_y.npy")
    m = net()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(a.epochs):
        m.train()
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        acc = float((m(xt).argmax(1).numpy() == yt).mean())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(m, (xt[:1],), str(a.out), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    params = sum(p.numel() for p in m.parameters())
    print(f"{a.out}: test accuracy {100 * acc:.1f}% ({len(yt)} samples), {params} parameters")


if __name__ == "__main__":
    main()
