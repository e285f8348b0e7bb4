"""Writes the .npz fixtures of crates/npy/tests (deterministic: fixed values, no randomness).

Run from this folder: python3 make.py
"""
import numpy as np

x = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
labels = np.array([3, 1, 4, 1, 5], dtype=np.int64)
big = np.arange(6, dtype=">i2").reshape(2, 3)
np.savez("stored.npz", x=x, labels=labels, big=big)
np.savez_compressed("deflated.npz", x=x, labels=labels, big=big)
