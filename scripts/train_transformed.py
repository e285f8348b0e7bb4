#!/usr/bin/env python3
"""The training-time method (Maungmaung & Kiya): train the small digits CNN on
images transformed block by block with a secret key, then measure its accuracy
on test images transformed with the right key, with a wrong key, and on plain
images.

The images are transformed by the Rust CLI (`onnx-protect transform-input`);
when the `cryptography` package is present, the CLI's output is also checked
against the independent Python implementation fixtures/transform/reference.py.

Usage (from the repository root, after `cargo build`):

    python3 scripts/train_transformed.py                      # the default set of transforms
    python3 scripts/train_transformed.py --config "2:--shuffle --negpos --ffx" --epochs 60
    python3 scripts/train_transformed.py --bin target/release/onnx-protect

Needs torch and numpy (as fixtures/digits/train.py). Deterministic: fixed keys,
seeds, one thread. Prints one line per configuration and a Markdown table.
"""
import argparse
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "fixtures" / "digits"
RIGHT_KEY = "6f6e6e782d70726f746563742d747261696e2d7472616e73666f726d65642d31"
WRONG_KEY = "77726f6e672d6b65792d77726f6e672d6b65792d77726f6e672d6b65792d3232"
WRONG_KEYS = 20  # wrong keys per configuration: WRONG_KEY with its last byte replaced by 0..19
DEFAULT_CONFIGS = [
    "2:--shuffle",
    "2:--negpos",
    "2:--ffx",
    "2:--shuffle --negpos --ffx",
    "4:--shuffle --negpos --ffx",
]
SEED = 0
BATCH = 64

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


class CNN(nn.Module):
    """The digits CNN of fixtures/digits/train.py (conv 3×3 ×3 + linear)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.pool(x)
        x = F.relu(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


def cli_transform(binary, key_file, x, block, flags, tmp):
    src, dst = tmp / "in.npy", tmp / "out.npy"
    np.save(src, x)
    cmd = [binary, "transform-input", "--key-file", str(key_file), "--block", str(block), *flags,
           "--range", "0,1", "--layout", "nchw", str(src), str(dst)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: {r.stderr}")
    return np.load(dst)


def check_reference(key_hex, x, block, flags, got):
    """Compares the CLI's output with fixtures/transform/reference.py (if `cryptography` is installed)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return "skipped (no cryptography package)"
    sys.path.insert(0, str(ROOT / "fixtures" / "transform"))
    import reference
    want = reference.transform(bytes.fromhex(key_hex), x, block, "--shuffle" in flags, "--negpos" in flags,
                               "--ffx" in flags, "--scramble-blocks" in flags, (0.0, 1.0))
    if not np.array_equal(want, got):
        sys.exit("the CLI and reference.py disagree")
    return "equal"


def train(x, y, epochs, lr=2e-3, wd=1e-4):
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    model = CNN()
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = math.ceil(len(xt) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), BATCH):
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "onnx-protect"))
    ap.add_argument("--config", action="append", help="BLOCK:FLAGS, e.g. '2:--shuffle --negpos' (repeatable)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--wrong-keys", type=int, default=WRONG_KEYS, help="number of wrong keys to try")
    a = ap.parse_args()
    configs = a.config or DEFAULT_CONFIGS

    x_tr = np.load(DIGITS / "train_x.npy").astype(np.float32)
    y_tr = np.load(DIGITS / "train_y.npy")
    x_te = np.load(DIGITS / "test_x.npy").astype(np.float32)
    y_te = np.load(DIGITS / "test_y.npy")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        right = tmp / "right.key"
        right.write_text(RIGHT_KEY + "\n")
        wrongs = []
        for i in range(a.wrong_keys):
            w = tmp / f"wrong{i}.key"
            w.write_text(WRONG_KEY[:-2] + f"{i:02x}" + "\n")
            wrongs.append(w)

        t0 = time.time()
        base = train(x_tr, y_tr, a.epochs)
        base_acc = accuracy(base, x_te, y_te)
        print(f"plain training (no transform): test accuracy {base_acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
        rows.append(("none (plain training)", "-", base_acc, None, None, "-"))

        for cfg in configs:
            block_s, flags_s = cfg.split(":", 1)
            block, flags = int(block_s), flags_s.split()
            t0 = time.time()
            tr = cli_transform(a.bin, right, x_tr, block, flags, tmp)
            te_right = cli_transform(a.bin, right, x_te, block, flags, tmp)
            ref = check_reference(RIGHT_KEY, x_te, block, flags, te_right)
            model = train(tr, y_tr, a.epochs)
            acc_right = accuracy(model, te_right, y_te)
            wrong = [accuracy(model, cli_transform(a.bin, w, x_te, block, flags, tmp), y_te) for w in wrongs]
            acc_wrong = (float(np.mean(wrong)), min(wrong), max(wrong))
            acc_plain = accuracy(model, x_te, y_te)
            print(f"block {block} {' '.join(flags)}: right key {acc_right:.4f}  wrong keys mean {acc_wrong[0]:.4f} "
                  f"(min {acc_wrong[1]:.4f}, max {acc_wrong[2]:.4f}, {len(wrong)} keys)  plain {acc_plain:.4f}  "
                  f"(reference.py {ref}; {time.time() - t0:.0f}s)", flush=True)
            rows.append((" ".join(flags), block, acc_right, acc_wrong, acc_plain, ref))

    print("\n| transforms | M | right key | wrong keys: mean (min–max) | plain images |")
    print("| --- | --- | --- | --- | --- |")
    for name, block, r, w, p, _ in rows:
        ws = "-" if w is None else f"{w[0]:.4f} ({w[1]:.4f}–{w[2]:.4f})"
        ps = "-" if p is None else f"{p:.4f}"
        print(f"| {name} | {block} | {r:.4f} | {ws} | {ps} |")


if __name__ == "__main__":
    main()
