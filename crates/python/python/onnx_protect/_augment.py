"""The shift augmentation of the training attacks' image inputs (:mod:`onnx_protect.assess`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._torch_inputs import Inputs


def channels_last(shape: Sequence[int]) -> bool:
    """Whether inputs of this shape are images stored (N, H, W, C), as TensorFlow and tf2onnx
    lay them out: 1, 3 or 4 channels last, H and W at least 8, and no such channel count
    second."""
    return len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) and min(shape[1], shape[2]) >= 8


def image_shift(shape: Sequence[int]) -> int:
    """The largest shift of the training augmentation for inputs of this shape: images
    (N, C, H, W), or (N, H, W, C) (:func:`channels_last`), with H and W at least 8 are
    shifted by up to an eighth of their smaller side, 1 to 4 pixels; other inputs are not
    augmented (0)."""
    if channels_last(shape):
        shape = (shape[0], shape[3], shape[1], shape[2])
    if len(shape) != 4 or min(shape[2], shape[3]) < 8:
        return 0
    return int(min(4, max(1, min(shape[2], shape[3]) // 8)))


def shifted(x: torch.Tensor | Inputs, shift: int, gen: torch.Generator) -> torch.Tensor | Inputs:
    """Each image of the batch moved by its own random offset of at most ``shift``
    pixels along each axis, zero-filled (a random crop of the zero-padded image); of
    :class:`Inputs`, the first (the others as they are)."""
    return shifted_with(x, None, shift, gen)[0]


def label_map(shape: Sequence[int], y) -> bool:
    """Whether labels ``y`` are a class per pixel of the images of input shape ``shape``
    (integer labels ``[N, H, W]``): shifted with them."""
    if channels_last(shape):
        shape = (shape[0], shape[3], shape[1], shape[2])
    return (image_shift(shape) > 0 and y.ndim == 3 and y.dtype.kind in "iu"
            and tuple(y.shape[1:]) == tuple(shape[2:]))


def shifted_with(x, y, shift: int, gen: torch.Generator, fill: int = -100):
    """:func:`shifted`, and the label maps ``y`` (``[N, H, W]``, or ``None``) moved by the same
    offsets, the uncovered positions ``fill`` (not scored)."""
    if isinstance(x, Inputs):
        first = next(iter(x.arrays))
        moved, y = shifted_with(x.arrays[first], y, shift, gen, fill)
        return Inputs({**x.arrays, first: moved}), y
    if channels_last(x.shape):
        moved, y = shifted_with(x.permute(0, 3, 1, 2), y, shift, gen, fill)
        return moved.permute(0, 2, 3, 1).contiguous(), y
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()

    def crop(t, value):
        padded = F.pad(t, (shift, shift, shift, shift), value=value)
        return torch.stack([padded[i, ..., dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])

    return crop(x, 0.0), None if y is None else crop(y, fill)
