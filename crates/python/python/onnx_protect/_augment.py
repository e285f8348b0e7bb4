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
    if isinstance(x, Inputs):
        first = next(iter(x.arrays))
        return Inputs({**x.arrays, first: shifted(x.arrays[first], shift, gen)})
    if channels_last(x.shape):
        return shifted(x.permute(0, 3, 1, 2), shift, gen).permute(0, 2, 3, 1).contiguous()
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
