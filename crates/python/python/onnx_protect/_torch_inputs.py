"""What :mod:`onnx_protect._torch_graph` feeds a model: the data of several inputs
(:class:`Inputs`), the inputs a Hugging Face export takes after the token ids when the data does
not give them (:data:`FILLED_INPUTS`), and an export's fixed batch size made the batch being run
(:func:`static_batch`, :func:`with_batch`, :func:`concat_batch`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
import torch

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


class Inputs:
    """Arrays (NumPy or torch) of a model's data inputs by name, each batch first, the model's
    first data input first; indexed and sliced along the batch like one array (``len``,
    ``shape`` and ``dtype`` are the first's)."""

    def __init__(self, arrays: Mapping):
        self.arrays = dict(arrays)

    @property
    def first(self):
        return next(iter(self.arrays.values()))

    def __len__(self) -> int:
        return len(self.first)

    @property
    def shape(self) -> tuple:
        return tuple(self.first.shape)

    @property
    def dtype(self):
        return self.first.dtype

    def __getitem__(self, idx) -> Inputs:
        return Inputs({k: v[idx] for k, v in self.arrays.items()})

    def map(self, f: Callable) -> Inputs:
        return Inputs({k: f(v) for k, v in self.arrays.items()})


def as_torch(x):
    """``x`` (an array or :class:`Inputs`) as torch tensors sharing its memory."""
    return x.map(torch.from_numpy) if isinstance(x, Inputs) else torch.from_numpy(x)


def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers, in order."""
    init_names = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init_names]


def as_inputs(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], what: str) -> Inputs:
    """Named arrays as the model's :class:`Inputs`: ``x`` stands for the first data input;
    every data input must be given but the :data:`FILLED_INPUTS` after the first; a name the
    model has no data input for, or arrays of different lengths, are refused (``ValueError``)."""
    names = [i.name for i in data_inputs(model)]
    given = {(names[0] if k == "x" and names else k): v for k, v in arrays.items()}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"{what}: array {unknown[0]!r} is not a data input of the model (inputs: "
                         f"{', '.join(names)}; 'x' stands for the first)")
    missing = [n for k, n in enumerate(names) if n not in given and (k == 0 or n not in FILLED_INPUTS)]
    if missing:
        raise ValueError(f"{what}: no array for the model's input {missing[0]!r} (arrays: {', '.join(arrays)})")
    if len({len(v) for v in given.values()}) > 1:
        raise ValueError(f"{what}: the arrays differ in length: "
                         + ", ".join(f"{k} {len(v)}" for k, v in given.items()))
    return Inputs({n: np.asarray(given[n]) for n in names if n in given})


def static_batch(model: onnx.ModelProto) -> int | None:
    """The first data input's first dimension when the export fixed it (``torch.onnx.export``
    without a dynamic axis): shapes in the graph then hold it as a constant."""
    init_names = {t.name for t in model.graph.initializer}
    first = next((i for i in model.graph.input if i.name not in init_names), None)
    dims = first.type.tensor_type.shape.dim if first is not None else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


# Operators whose constant shape (input 1) a static export writes with the batch size first.
BATCHED_SHAPES = {"Reshape", "Expand", "ConstantOfShape"}


def with_batch(op: str, ins: list, fixed: int, batch: int) -> torch.Tensor:
    """The constant shape of ``op`` with the export's batch size ``fixed`` in its first place
    made the batch being run (``Reshape``: only when what it reshapes holds that many batches);
    :func:`check` compares the result with onnxruntime run at the export's batch size."""
    shape = ins[1]
    if batch == fixed or shape.dim() != 1 or len(shape) == 0 or int(shape[0]) != fixed:
        return shape
    if op == "Reshape":
        rest = shape[1:]
        if bool((rest < 1).any()):  # a -1 or 0 elsewhere: the batch must lead what is reshaped
            fits = ins[0].dim() > 0 and ins[0].shape[0] == batch
        else:  # else the element count tells (the batch may be merged with heads)
            fits = ins[0].numel() * fixed == batch * int(torch.prod(shape))
        if not fits:
            return shape
    shape = shape.clone()
    shape[0] = batch
    return shape


def concat_batch(ins: list, axis: int, fixed: int, batch: int) -> list:
    """The inputs of a ``Concat`` along another axis than the first, those holding the export's
    batch size ``fixed`` first (a class token the export left unexpanded at batch 1) expanded
    to the batch being run when the others hold it."""
    present = [t for t in ins if t is not None and t.dim() > 0]
    if batch == fixed or not present or axis % present[0].dim() == 0:
        return ins
    firsts = {t.shape[0] for t in present}
    if firsts != {fixed, batch}:
        return ins
    return [t.expand(batch, *t.shape[1:]) if t is not None and t.dim() > 0 and t.shape[0] == fixed else t
            for t in ins]


def _filled(name: str, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if name == "position_ids":
        return torch.arange(x.shape[1], dtype=dtype).expand(x.shape[0], -1)
    return (torch.ones if name == "attention_mask" else torch.zeros)(x.shape[:2], dtype=dtype)


# Inputs a Hugging Face export (``optimum``, ``transformers``) takes after ``input_ids``, given
# the values the model itself uses when they are not passed: every token attended, one
# segment, positions 0, 1, ...
FILLED_INPUTS = ("attention_mask", "token_type_ids", "position_ids")


def filled_input_types(model: onnx.ModelProto) -> list[tuple[str, torch.dtype]]:
    """The data inputs after the first that can be filled (:data:`FILLED_INPUTS`) with the type
    each is fed in."""
    out = []
    for i in data_inputs(model)[1:]:
        if i.name not in FILLED_INPUTS:
            continue
        elem = i.type.tensor_type.elem_type
        dtype = torch.int32 if elem == onnx.TensorProto.INT32 else torch.float32 if elem in FLOAT_TYPES \
            else torch.bool if elem == onnx.TensorProto.BOOL else torch.int64
        out.append((i.name, dtype))
    return out


def filled_inputs(types: list[tuple[str, torch.dtype]], x: torch.Tensor,
                  given: Mapping = {}) -> dict[str, torch.Tensor]:  # noqa: B006 (read only)
    """Those inputs' values for the batch ``x`` of the first input, but the ``given`` ones."""
    return {name: _filled(name, x, dtype) for name, dtype in types if name not in given}
