"""Labels and scores of the training attacks (:mod:`onnx_protect.assess`).

A model's first output (or the scores a final ``Softmax`` reads) holds one score per class
along one axis, and the labels say which class is right:

* one label per sample (``y`` of shape ``[N]``) for scores ``[N, C]``: a classifier;
* one label per position for scores with more axes (``y`` of shape ``[N, ...]``): the class
  axis is the last (``[N, S, C]`` scores, ``[N, S]`` labels: a token classifier) or the
  second (``[N, C, H, W]`` scores, ``[N, H, W]`` labels: a segmentation map); for scores of
  rank 4 or more the second is tried first, else the last.

Accuracy is the share of labelled positions whose highest score is their label, the loss
the mean cross-entropy over them; a label of :data:`IGNORE` (PyTorch's and Hugging Face's
``-100``) marks a position that is neither scored nor trained on.

Floating-point labels are regression targets, one per output value (``y`` of the output's
shape): the score is R² over every value (1 − squared error ÷ the targets' spread around
each output's mean), clipped at 0 (no better than predicting the mean), the loss the mean squared
error (:func:`is_regression`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._torch_inputs import as_torch

IGNORE = -100


class LabelError(ValueError):
    """Labels that do not fit the model's scores (the message says how)."""


def class_axis(scores: Sequence[int], labels: Sequence[int]) -> int:
    """The axis of scores of shape ``scores`` that indexes the classes, for labels of shape
    ``labels`` (module docs); :class:`LabelError` when neither fits."""
    scores, labels = tuple(scores), tuple(labels)
    order = (1, len(scores) - 1) if len(scores) >= 4 else (len(scores) - 1, 1)
    for axis in order:
        if len(scores) >= 2 and scores[:axis] + scores[axis + 1:] == labels:
            return axis
    raise LabelError(f"labels of shape {list(labels)} do not fit the model's scores of shape {list(scores)}")


def is_regression(y: np.ndarray | torch.Tensor) -> bool:
    """Whether labels are regression targets (floating point) rather than classes."""
    return y.dtype.is_floating_point if isinstance(y, torch.Tensor) else np.asarray(y).dtype.kind == "f"


def as_labels(scores: Sequence[int], y: np.ndarray) -> np.ndarray:
    """Labels as the attacks read them for outputs of shape ``scores``: float32 regression
    targets when they are floats of the output's shape (or floats that are not whole
    numbers), else int64 classes (classes saved as floats included)."""
    y = np.asarray(y)
    if y.dtype.kind not in "iufb":
        raise LabelError(f"labels of type {y.dtype}: give integer classes or float regression targets")
    if y.dtype.kind == "f" and (tuple(y.shape[1:]) == tuple(scores[1:])
                                or not (np.isfinite(y).all() and np.array_equal(y, np.round(y)))):
        return y.astype(np.float32)
    return y.astype(np.int64)


def check_labels(scores: Sequence[int], y: np.ndarray, what: str) -> None:
    """Refuses labels ``y`` (every sample's, batch first) that do not fit scores of shape
    ``scores`` (of a batch of the same inputs), or name a class the scores lack."""
    if is_regression(y):
        if tuple(y.shape[1:]) != tuple(scores[1:]):
            raise LabelError(f"{what}: regression targets of shape {list(y.shape)} do not fit the model's outputs "
                             f"of shape {['N', *scores[1:]]}: give one float target per output value")
        if not np.isfinite(y).all():
            raise LabelError(f"{what}: a regression target is not finite")
        return
    try:
        axis = class_axis(scores, (scores[0], *y.shape[1:]))
    except LabelError:  # said with the labels' own shape, and what would fit
        raise LabelError(f"{what}: labels of shape {list(y.shape)} do not fit the model's scores of shape "
                         f"{['N', *scores[1:]]}: give one label per sample for [N, C] scores, or one per position "
                         "for scores whose class axis is the second or the last") from None
    classes = scores[axis]
    bad = (y != IGNORE) & ((y < 0) | (y >= classes))
    if bad.any():
        raise LabelError(f"{what}: label {int(y[bad][0])} at sample {int(np.argwhere(bad)[0][0])} is not a class "
                         f"of the model's {classes} (0 to {classes - 1}, or {IGNORE} for a position not scored)")
    if not (y != IGNORE).any():
        raise LabelError(f"{what}: every label is {IGNORE}: nothing to score")


def _errors(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (scores.float() - target.float()).square()


def hits_and_loss(scores: torch.Tensor, target: torch.Tensor) -> tuple[int, float, int]:
    """Correct labelled positions, summed cross-entropy over them, and their count."""
    axis = class_axis(scores.shape, target.shape)
    labelled = target != IGNORE
    hits = int(((scores.argmax(axis) == target) & labelled).sum())
    loss = float(F.cross_entropy(scores.movedim(axis, 1), target, ignore_index=IGNORE, reduction="sum"))
    return hits, loss, int(labelled.sum())


def loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy over the labelled positions of a batch (0 without any), or for
    regression targets the mean squared error."""
    if is_regression(target):
        return _errors(scores, target).mean()
    axis = class_axis(scores.shape, target.shape)
    total = F.cross_entropy(scores.movedim(axis, 1), target, ignore_index=IGNORE, reduction="sum")
    return total / max(1, int((target != IGNORE).sum()))


def scores(g: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``g`` on ``(x, y)`` (for regression targets R²,
    clipped at 0, and the mean squared error; a non-finite loss counts as infinite)."""
    g.eval()
    hits, loss_sum, n = 0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), 512):
            out, target = g(as_torch(x[i:i + 512])), torch.from_numpy(y[i:i + 512])
            if is_regression(y):
                sse = float(_errors(out, target).sum())
                hits, loss_sum, n = hits, loss_sum + sse, n + target.numel()
            else:
                h, s, k = hits_and_loss(out, target.long())
                hits, loss_sum, n = hits + h, loss_sum + s, n + k
    mean = loss_sum / max(1, n)
    if is_regression(y):
        spread = float(np.square(y.astype(np.float64) - y.mean(axis=0, dtype=np.float64)).sum())
        r2 = 1.0 - loss_sum / spread if spread > 0 and math.isfinite(loss_sum) else 0.0
        return max(0.0, r2), (mean if math.isfinite(mean) else math.inf)
    return hits / max(1, n), (mean if math.isfinite(mean) else math.inf)


def chance(y: np.ndarray) -> float:
    """The share of the labelled positions that hold the most frequent label (for regression
    targets, 0: the R² of predicting their mean)."""
    if is_regression(y):
        return 0.0
    labelled = y[y != IGNORE]
    return float(np.bincount(labelled.ravel()).max() / labelled.size) if labelled.size else 0.0


def draw(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``fraction`` of the sample indices: stratified with one label per sample, at least
    one per class; with labels per position or regression targets, a plain draw of at least
    one sample."""
    if y.ndim > 1 or is_regression(y):
        n = len(y)
        return np.sort(rng.choice(n, max(1, int(round(fraction * n))), replace=False))
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.extend(rng.choice(idx, max(1, int(round(fraction * len(idx)))), replace=False).tolist())
    return np.sort(np.array(keep))
