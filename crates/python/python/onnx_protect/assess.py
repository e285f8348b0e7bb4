"""Training attacks on a protected model: what does the protected file save an
attacker who has some labelled data?

The positions of the encrypted elements are public (``inspect``), and the graph and
every clear weight are in the file. :func:`attack` runs, on the attacker's labelled
data at several sizes, the training attacks an attacker actually runs, and the
reference they must beat:

* ``relearn``: every encrypted element is reset with PyTorch's default
  initialisation of its layer (drawn from a generator independent of any training
  seed), then only the encrypted elements are trained, every clear weight and every
  clear normalisation statistic frozen as stored (with the head alone encrypted, this
  is linear probing of the clear feature extractor);
* ``finetune``: the same reset, then every parameter is trained;
* ``scratch``: the strongest network the tool builds from the graph, freshly
  initialised and trained on the same data with the same recipe: the exported graph,
  with a fresh BatchNorm after each Conv whose normalisation the export folded
  (:func:`onnx_protect._torch_graph.folded_batchnorm_convs`). The report says which
  (``scratch_reference``).

One-element float constants (an attention scale, an epsilon) are fixed values of the
graph; one that the file encrypts is unknown without the key, so it is reset (1 where
it multiplies) and trained like a weight, by the attacks and by scratch alike.

An attack that starts from exactly scratch's state (every parameter and statistic value,
what trains, what is frozen: :func:`start_state`) on the same data and seeds is the same
computation; its result is scratch's, not run again (listed in the report's ``reused``).
With every weight encrypted and scratch the exported graph itself, the attacks start
from scratch's draws.

Each run trains for ``steps`` steps on batches of 32 (the whole draw when smaller),
image batches shifted at random by a few pixels (:func:`image_shift`), at each
learning rate of ``lrs`` with each recipe of ``recipes`` (:func:`train`: ``one-cycle``,
AdamW with a one-cycle schedule; ``constant``, Adam at a constant rate), and keeps one
test accuracy (``lr_choice``, the same for scratch and the attacks):

* ``held_out`` (:func:`attack`'s default, one-cycle alone): the training of the highest
  accuracy on a held-out fifth of the attacker's own data (never the test data; equal
  ones told apart by the cross-entropy, :func:`best_lr`), repeated on all of it;
* ``best`` (:func:`policy_search`'s, both recipes): every training on all of the data,
  the highest test accuracy kept: an upper bound on what an attacker who tunes the rate
  and the recipe reaches. The report records each training's accuracy (``runs``).

Each data size is drawn ``seeds`` times (stratified, at least one sample per class, with
one label per sample).
The headline is the **gap over scratch**: the best attack's mean test accuracy minus
scratch's, in points, at the worst data size. A protection holds when the gap is at
most ``target`` (2 points by default).

:func:`attack_masks` runs the same on given unknown elements (an attacker's guess of
secret positions). :func:`policy_search` encrypts a plain model with the points of
:data:`SEARCH`, cheapest first for that model (:func:`plan`: ``first``, ``last``, both,
…, ``all``), screens each at one draw per size (stopping at the first size over the
target), confirms a point that passes at ``seeds`` draws, and stops at the first
confirmed on the given data; every run of both passes takes ``lr_choice="best"`` over
both recipes.

Needs ``torch`` and ``onnx`` (``pip install 'onnx-protect[torch]'``). Which models are
covered: :mod:`onnx_protect._torch_graph`. Command line::

    python3 -m onnx_protect.assess PROTECTED.onnx --data train.npz --test test.npz [--json OUT]
    python3 -m onnx_protect.assess --search MODEL.onnx --data train.npz --test test.npz
    (--lr-choice held_out|best, --recipes one-cycle,constant: the choice and the recipes)

``--data``/``--test``: ``.npz`` files with arrays ``x`` (inputs: whole numbers for a model
that reads token ids; for a model with several inputs, one array per input by name, ``x``
the first, the Hugging Face ones after it filled when absent) and ``y`` (integer classes, one
per sample or one per position of the scores, or float regression targets:
:mod:`onnx_protect._labels`). See docs/protection.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

try:
    import onnx
    import torch
except ImportError as e:  # pragma: no cover - import guard
    raise ImportError("onnx_protect.assess needs torch and onnx: pip install 'onnx-protect[torch]'") from e

from . import _torch_graph as tg
from ._labels import (LabelError, as_labels, chance, check_labels, draw, is_regression,  # noqa: F401 (API)
                      scores)
from ._labels import loss as _loss
from ._augment import channels_last, image_shift, label_map, shifted, shifted_with  # noqa: F401 (API)
from ._report import summary as _summary
from ._torch_inputs import Inputs, as_inputs, as_torch
from ._init import _bias_fans, default_init  # noqa: F401 (API)
from ._torch_qop import is_scale

if __name__ == "__main__":
    # `python -m onnx_protect.assess`: the package's own module runs, not this second copy (the
    # search, imported below, imports that module by name).
    from onnx_protect.assess import main as _package_main

    sys.exit(_package_main())

SIZES = (0.01, 0.05, 0.10)
SEEDS = 3
STEPS = 300
BATCH = 32
LRS = (1e-3, 3e-3, 1e-2)
WEIGHT_DECAY = 1e-4
TARGET = 0.02
# policy_search: draws added at a time to a point whose mean gap is under the target
# but whose upper bound is not, and the most it gets.
MORE_SEEDS = 3
MAX_SEEDS = 9
# One-sided 95% quantiles of Student's t by degrees of freedom (1 to 10; beyond, 1.8):
# the upper bound of a mean gap over n paired draws is mean + t[n - 1] * sd / sqrt(n).
T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812)
ATTACKS = ("relearn", "finetune")
# How a run trains (train()) and how its learning rate is chosen (_one()).
RECIPES = ("one-cycle", "constant")
LR_CHOICES = ("held_out", "best")
ELEMENT_BYTES = {"FLOAT": 4, "FLOAT16": 2, "BFLOAT16": 2, "DOUBLE": 8}
# Integer types of quantised weights (trained as their float values: onnx_protect._torch_quant).
QUANT_BYTES = {"INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "INT32": 4}
# Training inputs that a reset quantisation scale is fitted to (onnxruntime's quantiser
# calibrates on a few batches).
CALIBRATION = 64
# Reset draws are offset from the data draws so that no seed is shared with anything
# the model was trained from.
RESET_SEED_BASE = 7_919_000


class AttackError(ValueError):
    """The training attacks cannot run on this model or data (the message says why)."""


# ---------------------------------------------------------------- positions


def encrypted_masks(info: dict, graph: tg.TorchGraph) -> dict[str, np.ndarray]:
    """locator -> boolean mask of the encrypted elements, from ``inspect``'s report."""
    prot = info.get("protection")
    if not prot:
        raise AttackError("the model is not protected: nothing to attack")
    if prot.get("positions") != "public":
        raise AttackError("the positions are sealed (--positions secret): these attacks need public positions")
    out: dict[str, np.ndarray] = {}
    for t in prot["tensors"]:
        c = graph.constants.get(t["locator"])
        size = ELEMENT_BYTES.get(t["data_type"]) or (QUANT_BYTES.get(t["data_type"]) if c and c.quant else None)
        if size is None or c is None:
            raise AttackError(
                f"encrypted tensor {t['name']!r} ({t['data_type']}, {t['locator']}) is not a floating-point "
                "constant or a weight a DequantizeLinear reads: training attacks cover float and quantised "
                "weights only")
        mask = out.get(t["locator"], np.zeros(c.array.size, dtype=bool))
        for a, b in t["spans"]:
            mask[a // size:-(-b // size)] = True
        out[t["locator"]] = mask
    return out


def weight_share(info: dict) -> float:
    """Encrypted share of the weight bytes (``inspect``'s ``weights``: every floating-point
    constant the model reads and every constant in a weight role, quantised weights too)."""
    total = (info.get("weights") or {}).get("bytes") or sum(
        t.get("nbytes", 0) for t in info.get("tensors", []) if t.get("data_type") in ELEMENT_BYTES) or 1
    enc = sum(t["encrypted_bytes"] for t in info["protection"]["tensors"])
    return min(1.0, enc / total)


# ---------------------------------------------------------------- runs


class Setup:
    """The model, its masks and the data of one attack study."""

    def __init__(self, model: onnx.ModelProto, masks: dict[str, np.ndarray], batchnorm: bool = True):
        self.model = model
        self.masks = masks
        self.bias_fans = _bias_fans(tg.inlined(model))
        # Conv outputs after which scratch gets back the BatchNorm the export folded.
        self.bn_convs = tg.folded_batchnorm_convs(tg.inlined(model)) if batchnorm else []
        # Training inputs that reset quantisation scales are fitted to (Setup.calibrate).
        self.calibration: torch.Tensor | Inputs | None = None

    def fresh(self) -> tg.TorchGraph:
        """The protected model: its encrypted one-element constants (an attention scale)
        are parameters the attacker resets and trains, as every encrypted weight."""
        return tg.TorchGraph(self.model, trainable=frozenset(self.masks))

    def reset(self, gen: torch.Generator) -> tg.TorchGraph:
        """The protected model with every encrypted element reset (quantisation scales
        calibrated: :meth:`calibrate`)."""
        g = self.fresh()
        with torch.no_grad():
            for loc, mask in self.masks.items():
                t = g.tensor(loc)
                m = torch.from_numpy(mask.reshape(tuple(t.shape)))
                t.copy_(torch.where(m, default_init(g, self.bias_fans, loc, gen), t))
        return self.calibrate(g, self.masks)

    def calibrate(self, g: tg.TorchGraph, reset: Iterable[str]) -> tg.TorchGraph:
        """``g`` with the quantisation scales among the ``reset`` constants (locators) fitted
        to the calibration batch, as onnxruntime's calibration sets them: a scale reset to 1
        would round most values to 0."""
        reset = set(reset) & _scales(g)
        scales = [v for v, loc in g.by_value.items() if loc in reset]
        if scales and self.calibration is not None:
            g.calibrate(self.calibration, scales)
        return g

    def scratch(self, gen: torch.Generator) -> tg.TorchGraph:
        """The architecture trained from scratch: every weight reset, and a fresh
        BatchNorm after each Conv whose normalisation the export folded
        (:func:`onnx_protect._torch_graph.folded_batchnorm_convs`). A one-element
        constant the file encrypts (an attention scale) is not known without the key:
        reset and trained as in the attacks; the other ones stay as stored."""
        g = self.fresh()
        g.insert_batchnorm(self.bn_convs)
        with torch.no_grad():
            for loc in g.constants:
                g.tensor(loc).copy_(default_init(g, self.bias_fans, loc, gen))
        return self.calibrate(g, g.constants)

    def reference(self, shift: int) -> str:
        """What scratch is, in words (the report's ``scratch_reference``)."""
        text = "exported graph"
        if self.bn_convs:
            text += f" + re-inserted BatchNorm after {len(self.bn_convs)} Conv"
        if shift:
            text += f", shift augmentation (up to {shift} pixel{'s' if shift > 1 else ''})"
        return text


def _scales(g: tg.TorchGraph) -> set[str]:
    """The locators of the constants that quantisers read as scales."""
    return {loc for loc, c in g.constants.items() if any(is_scale(op, i) for op, i in c.users)}


def _trained(g: tg.TorchGraph, params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters a run trains: all of ``params`` but quantisation scales, which stay as
    calibrated (:meth:`Setup.calibrate`; an optimiser's steps would soon make one 0 or
    negative)."""
    scales = {id(g.tensor(loc)) for loc in _scales(g)}
    out = []
    for p in params:
        if id(p) in scales:
            p.requires_grad_(False)
        else:
            out.append(p)
    return out


def _relearn_only(g: tg.TorchGraph, masks: dict[str, np.ndarray]) -> list[torch.nn.Parameter]:
    """Freezes every clear element: returns the parameters to train, with gradient
    hooks that zero the clear elements of partly encrypted tensors. Clear BN
    statistics stay as stored (their layers run in inference mode)."""
    params = []
    g.restore = []
    for p in g.params.values():
        p.requires_grad_(False)
    clear_stats = set()
    for loc in g.stat_names:
        if loc not in masks:
            clear_stats.add(loc)
    g.frozen_stats = {v for v, loc in g.by_value.items() if loc in clear_stats}
    for loc, mask in masks.items():
        if g.is_stat(loc):
            continue
        p = g.tensor(loc)
        p.requires_grad_(True)
        if not mask.all():
            keep = torch.from_numpy(mask.reshape(tuple(p.shape)))
            p.register_hook(lambda grad, keep=keep.to(p.dtype): grad * keep)
            # AdamW's decoupled weight decay moves every element; train() puts the clear
            # ones back after each step.
            g.restore.append((p, keep, p.detach().clone()))
        params.append(p)
    return params


def start_state(g: tg.TorchGraph, params: list, hooked: bool) -> str | None:
    """A digest of where a run starts: every parameter and buffer value, which parameters
    train, which statistics stay frozen. Two runs that start from the same state on the
    same data and seeds are the same computation. ``None`` (never equal) when gradient
    hooks train parts of tensors."""
    if hooked:
        return None
    h = hashlib.sha256()
    training = {id(p) for p in params}
    for key, p in sorted(g.params.items()):
        h.update(f"{key}:{id(p) in training}:{tuple(p.shape)}".encode())
        h.update(p.detach().numpy().tobytes())
    for key, b in sorted(g.named_buffers()):
        h.update(f"{key}:{tuple(b.shape)}".encode())
        h.update(b.numpy().tobytes())
    h.update(repr(sorted(g.frozen_stats)).encode())
    return h.hexdigest()


def accuracy(g: tg.TorchGraph, x: np.ndarray, y: np.ndarray) -> float:
    return scores(g, x, y)[0]


def train(g: tg.TorchGraph, params: list, x: np.ndarray, y: np.ndarray, lr: float, steps: int, seed: int,
          shift: int = 0, recipe: str = "one-cycle") -> tg.TorchGraph:
    """The training of every run: ``steps`` batches of :data:`BATCH` (the whole data
    when it is smaller), each image batch shifted by up to ``shift`` pixels, with the
    optimiser of ``recipe`` (:data:`RECIPES`): ``one-cycle``, AdamW (weight decay
    :data:`WEIGHT_DECAY`) with a one-cycle schedule peaking at ``lr``; ``constant``,
    Adam at the constant rate ``lr``."""
    if recipe not in RECIPES:
        raise AttackError(f"unknown recipe {recipe!r}; recipes are {', '.join(RECIPES)}")
    if not params:
        return g
    gen = torch.Generator().manual_seed(seed)
    xt, yt = as_torch(x), torch.from_numpy(y)
    maps = bool(shift) and label_map(x.shape, y)  # class maps move with their images
    if recipe == "one-cycle":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    else:
        opt, sched = torch.optim.Adam(params, lr=lr), None
    batch = min(BATCH, len(xt))
    g.train()
    step = 0
    while step < steps:
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt) - batch + 1, batch):
            if step == steps:
                break
            idx = perm[i:i + batch]
            xb, yb = shifted_with(xt[idx], yt[idx] if maps else None, shift, gen) if shift else (xt[idx], None)
            loss = _loss(g(xb), yt[idx] if yb is None else yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if g.restore:
                with torch.no_grad():
                    for p, keep, stored in g.restore:
                        p.copy_(torch.where(keep, p, stored))
            if sched is not None:
                sched.step()
            step += 1
    g.eval()
    return g


def best_lr(by_lr: dict[float, tuple[float, float]]) -> float:
    """The learning rate of the highest held-out accuracy in ``by_lr`` (rate -> (accuracy,
    cross-entropy)); among equal accuracies the lowest cross-entropy, then the smallest rate."""
    return max(by_lr, key=lambda lr: (by_lr[lr][0], -by_lr[lr][1], -lr))


def _run_name(recipe: str, lr: float) -> str:
    """A training's name in the report: ``one-cycle@0.003``."""
    return f"{recipe}@{lr:g}"


def _one(make: Callable[[], tuple[tg.TorchGraph, list]], x, y, xt, yt, lrs, steps, rng, shift=0,
         lr_choice: str = "held_out", recipes: Sequence[str] = ("one-cycle",)) -> dict:
    """One run: a training at each recipe and rate, and the test accuracy kept.

    * ``held_out``: each on four fifths of (x, y), the one of the highest held-out
      accuracy (ties, common when a fifth of a small draw has a few samples, to the lower
      held-out cross-entropy, then the smaller rate, then the earlier recipe) retrained
      on all of it and tested;
    * ``best``: each on all of (x, y), tested; the highest test accuracy is kept (an
      upper bound on what an attacker who tunes the rate reaches). ``test`` gives every
      training's test accuracy."""
    if lr_choice not in LR_CHOICES:
        raise AttackError(f"unknown lr_choice {lr_choice!r}; choices are {', '.join(LR_CHOICES)}")
    runs = [(recipe, lr) for recipe in recipes for lr in lrs]
    if not runs:
        raise AttackError("no learning rate or no recipe to train with")
    if lr_choice == "best":
        test = {}
        for recipe, lr in runs:
            g, params = make()
            train(g, params, x, y, lr, steps, seed=int(rng.integers(2**31)), shift=shift, recipe=recipe)
            test[(recipe, lr)] = accuracy(g, xt, yt)
        recipe, lr = max(runs, key=lambda r: test[r])  # the first of equal accuracies
        return {"accuracy": test[(recipe, lr)], "lr": lr, "recipe": recipe,
                "test": {_run_name(*r): a for r, a in test.items()}}
    n = len(y)
    order = rng.permutation(n)
    n_val = max(1, n // 5)
    val, fit = order[:n_val], order[n_val:]
    if len(fit) == 0:
        fit = val
    by_run = {}
    for recipe, lr in runs:
        g, params = make()
        train(g, params, x[fit], y[fit], lr, steps, seed=int(rng.integers(2**31)), shift=shift, recipe=recipe)
        by_run[(recipe, lr)] = scores(g, x[val], y[val])
    order_of = {r: i for i, r in enumerate(runs)}
    recipe, lr = max(runs, key=lambda r: (by_run[r][0], -by_run[r][1], -r[1], -order_of[r]))
    g, params = make()
    train(g, params, x, y, lr, steps, seed=int(rng.integers(2**31)), shift=shift, recipe=recipe)
    return {"accuracy": accuracy(g, xt, yt), "lr": lr, "recipe": recipe,
            "validation": {_run_name(*r): v[0] for r, v in by_run.items()},
            "validation_loss": {_run_name(*r): v[1] for r, v in by_run.items()}}


def attack(protected: str | os.PathLike, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
           **options: Any) -> dict[str, Any]:
    """Runs the training attacks on a protected model (module docs) at the public
    positions of its encrypted elements and returns the report of :func:`attack_masks`
    with the protected file's name (``model``) and encrypted byte share (``share``)."""
    from . import inspect as _inspect

    info = _inspect(protected)
    model = onnx.load(os.fspath(protected))
    encrypted = frozenset(t["locator"] for t in (info.get("protection") or {}).get("tensors", []))
    masks = encrypted_masks(info, tg.TorchGraph(model, trainable=encrypted))
    return {"model": os.fspath(protected), "share": weight_share(info),
            **attack_masks(model, masks, x, y, x_test, y_test, **options)}


def _as_input(model: onnx.ModelProto, x, what: str) -> np.ndarray | Inputs:
    """``x`` in the types the model's data inputs are fed in (float32, or the integer type
    of an input of token ids or a mask; integer inputs refuse values that are not whole
    numbers): an array for the first data input, or arrays by input name (a mapping or
    :class:`Inputs`: ``x`` stands for the first; :func:`onnx_protect._torch_inputs.as_inputs`)."""
    if isinstance(x, (Inputs, dict)):
        try:
            named = as_inputs(model, x.arrays if isinstance(x, Inputs) else x, what)
        except ValueError as e:
            raise AttackError(str(e)) from None
        return Inputs({n: _as_type(model, n, v, f"{what} ({n})") for n, v in named.arrays.items()})
    return _as_type(model, None, x, what)


def _as_type(model: onnx.ModelProto, name: str | None, x, what: str) -> np.ndarray:
    dtype = tg.input_dtype(model, name)
    x = np.asarray(x)
    if dtype.kind in "iub" and x.dtype.kind not in "iub":
        whole = np.isfinite(x).all() and np.array_equal(x, np.round(x))
        if not whole:
            raise AttackError(f"{what}: the model's input takes {dtype.name} values, the data has fractions")
    return np.ascontiguousarray(x, dtype=dtype)


def attack_masks(model: onnx.ModelProto, masks: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                 x_test: np.ndarray, y_test: np.ndarray, *, sizes: Sequence[float] = SIZES, seeds: int = SEEDS,
                 steps: int = STEPS, lrs: Sequence[float] = LRS, attacks: Sequence[str] = ATTACKS,
                 target: float = TARGET, check: bool = True, scratch_cache: dict | None = None,
                 augment: bool = True, batchnorm: bool = True, run_cache: dict | None = None,
                 stop_early: bool = False, progress: Callable[[str], None] | None = None,
                 lr_choice: str = "held_out", recipes: Sequence[str] = ("one-cycle",)) -> dict[str, Any]:
    """Runs the training attacks on ``model`` with the elements of ``masks`` (locator ->
    boolean mask over the constant's elements) unknown to the attacker: the encrypted
    ones, or an attacker's guess of them. Returns the report: per data size the mean
    test accuracy of scratch and each attack, the best attack and its gap over scratch;
    the headline gap; ``scratch_reference``, what scratch is (the exported graph, a
    BatchNorm re-inserted after each Conv whose normalisation the export folded unless
    ``batchnorm`` is false, the shift augmentation) and ``augmentation``, which every
    run gets (image inputs, unless ``augment`` is false).

    Each run trains at every rate of ``lrs`` with every recipe of ``recipes``
    (:func:`train`: ``one-cycle``, ``constant``) and keeps one test accuracy:
    ``lr_choice="held_out"`` that of the training chosen on a held-out fifth of the draw,
    retrained on all of it; ``"best"`` the highest test accuracy of the trainings on all
    of the draw, for scratch and the attacks alike. Per size, ``runs`` gives each run's
    record per draw (``lr``, ``recipe``, and ``test`` or ``validation``: every training's
    accuracy, named ``recipe@rate``).

    ``check``: before anything trains, the interpreter is compared with onnxruntime on
    the model as the attacks start it (every encrypted element reset, seed of the first
    draw), on the first 64 test inputs.

    Scratch does not depend on what is encrypted: ``scratch_cache`` (a dict, filled
    here) lets several protected copies of one model share its runs. ``run_cache`` (a
    dict, filled here) keeps the attack runs of these masks by data size and draw, for
    a later call on the same masks with more draws. ``stop_early``: stop at the first
    data size whose gap is above the target (the report then has fewer sizes)."""
    torch.set_num_threads(int(os.environ.get("ONNX_PROTECT_THREADS", "1")))
    y, y_test = np.asarray(y), np.asarray(y_test)
    x, x_test = _as_input(model, x, "data"), _as_input(model, x_test, "test data")
    if len(x) != len(y) or len(x_test) != len(y_test) or len(y) == 0 or len(y_test) == 0:
        raise AttackError("data and labels differ in length, or are empty")
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise AttackError(f"unknown attack(s) {', '.join(sorted(unknown))}; attacks are {', '.join(ATTACKS)}")
    if lr_choice not in LR_CHOICES:
        raise AttackError(f"unknown lr_choice {lr_choice!r}; choices are {', '.join(LR_CHOICES)}")
    recipes = tuple(recipes)
    unknown = set(recipes) - set(RECIPES)
    if unknown or not recipes or not len(lrs):
        raise AttackError(f"recipes must be some of {', '.join(RECIPES)} (got {', '.join(recipes) or 'none'}) "
                          "and lrs not empty")
    graph = tg.TorchGraph(model, trainable=frozenset(masks))
    for loc, mask in masks.items():
        c = graph.constants.get(loc)
        if c is None or mask.shape != (c.array.size,):
            raise AttackError(f"{loc}: not a floating-point constant of the model with {mask.size} elements")
    setup = Setup(model, masks, batchnorm=batchnorm)
    setup.calibration = as_torch(x[:CALIBRATION])
    if check:
        tg.check(_reset_filled(model, setup, torch.Generator().manual_seed(RESET_SEED_BASE)), x_test[:64])
    with torch.no_grad():
        shape = tuple(setup.fresh().eval()(as_torch(x_test[:2])).shape)
    y, y_test = as_labels(shape, y), as_labels(shape, y_test)
    if is_regression(y) != is_regression(y_test):
        raise AttackError("the data's labels and the test data's differ in kind (classes, regression targets)")
    check_labels(shape, y, "labels of the data")
    check_labels(shape, y_test, "labels of the test data")
    # Labels per position move with the image only as a class map of its pixels.
    maps = label_map(x.shape, y)
    shift = image_shift(x.shape) if augment and (y.ndim == 1 or maps) else 0
    reference = setup.reference(shift)
    # Relearning trains parts of partly encrypted tensors through gradient hooks.
    partial = any(not m.all() for loc, m in masks.items() if not graph.is_stat(loc))
    # Scratch depends on the model and on which of its one-element constants are encrypted.
    scalars = tuple(sorted(loc for loc, c in graph.constants.items() if c.array.size == 1))
    report: dict[str, Any] = {
        "steps": steps, "lrs": list(lrs), "lr_choice": lr_choice, "recipes": list(recipes), "seeds": seeds,
        "pool": int(len(y)), "test": int(len(y_test)),
        "metric": "r2" if is_regression(y) else "accuracy", "chance": chance(y_test), "target": target, "scalars": list(scalars),
        "scratch_reference": reference, "reinserted_batchnorm": len(setup.bn_convs),
        "augmentation": (f"shifts of up to {shift} pixel{'s' if shift > 1 else ''}"
                         + (", label maps moved with the images" if maps else "")) if shift else "none",
        "stopped_early": False,
        "sizes": []}
    for fraction in sizes:
        row: dict[str, Any] = {"fraction": fraction, "samples": [], "start": [], "scratch": [], "reused": [],
                               **{a: [] for a in attacks}, "runs": {a: [] for a in ("scratch", *attacks)}}
        for s in range(seeds):
            rng = np.random.default_rng(1_000 + s)
            idx = draw(y, fraction, rng)
            xs, ys = x[idx], y[idx]
            row["samples"].append(int(len(idx)))
            reset_gen = lambda: torch.Generator().manual_seed(RESET_SEED_BASE + s)  # noqa: E731
            row["start"].append(accuracy(setup.reset(reset_gen()), x_test, y_test))

            def scratch():
                g = setup.scratch(reset_gen())
                return g, _trained(g, g.params.values())

            def relearn():
                g = setup.reset(reset_gen())
                return g, _trained(g, _relearn_only(g, masks))

            def finetune():
                g = setup.reset(reset_gen())
                return g, _trained(g, g.params.values())

            makers = {"scratch": scratch, "relearn": relearn, "finetune": finetune}
            # A run that starts from the state of one already made (every weight encrypted,
            # scratch the exported graph: the attacks start from scratch's draws) is that
            # run: its result is reused.
            done: dict[str, dict] = {}
            recipe_key = (tuple(lrs), lr_choice, recipes)
            for name in ("scratch", *attacks):
                state = start_state(*makers[name](), hooked=name == "relearn" and partial)
                if name == "scratch":
                    cache, key = scratch_cache, (fraction, s, steps, recipe_key, scalars, reference)
                else:
                    cache, key = run_cache, (name, fraction, s, steps, recipe_key, reference)
                if state is not None and state in done:
                    r = done[state]
                    row["reused"].append(name)
                elif cache is not None and key in cache:
                    r = cache[key]
                else:
                    r = _one(makers[name], xs, ys, x_test, y_test, lrs, steps, np.random.default_rng(2_000 + s),
                             shift=shift, lr_choice=lr_choice, recipes=recipes)
                    if progress:
                        progress(f"{fraction:.0%} seed {s}: {name} {100 * r['accuracy']:.1f}% "
                                 f"({r['recipe']}, lr {r['lr']:g})")
                if cache is not None:
                    cache[key] = r
                if state is not None:
                    done.setdefault(state, r)
                row[name].append(r["accuracy"])
                row["runs"][name].append(r)
        mean = {k: float(np.mean(row[k])) for k in ("start", "scratch", *attacks)}
        best = max(attacks, key=lambda a: mean[a])
        row.update(mean=mean, best_attack=best, gap=mean[best] - mean["scratch"],
                   bound=upper_bound(np.subtract(row[best], row["scratch"])))
        report["sizes"].append(row)
        if stop_early and row["gap"] > target and fraction != sizes[-1]:
            report["stopped_early"] = True
            break
    worst = max(report["sizes"], key=lambda r: r["gap"])
    report["gap"] = worst["gap"]
    report["worst_fraction"] = worst["fraction"]
    report["holds"] = bool(report["gap"] <= target)
    bounds = [r["bound"] for r in report["sizes"]]
    report["bound"] = None if None in bounds else max(bounds)
    return report


def upper_bound(gaps: Sequence[float]) -> float | None:
    """The one-sided 95% upper confidence bound of the mean of ``gaps`` (one per draw,
    each the best attack's accuracy minus scratch's on that draw's data): mean + t * sd /
    sqrt(n) with Student's t at n - 1 degrees of freedom (:data:`T95`). One draw has no
    spread to measure: no bound (``None``)."""
    gaps = np.asarray(gaps, dtype=float)
    if len(gaps) < 2:
        return None
    t = T95[len(gaps) - 2] if len(gaps) - 1 <= len(T95) else 1.8
    return float(gaps.mean() + t * gaps.std(ddof=1) / np.sqrt(len(gaps)))


def _reset_filled(model: onnx.ModelProto, setup: Setup, gen: torch.Generator) -> onnx.ModelProto:
    """A copy of the model with every encrypted element as the attacks reset it (the
    default initialisation of its layer: 1 where a one-element constant multiplies or
    divides, so the graph stays finite) and no manifest, for checking the interpreter
    against onnxruntime on the weights the attacks start from."""
    from onnx import numpy_helper

    g = setup.reset(gen)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.metadata_props[:]
    m.metadata_props.extend(p for p in model.metadata_props if not p.key.startswith("onnx-protect/v"))
    scales = {}  # a dynamically quantised weight's encrypted scale -> the one its integers get
    for loc in setup.masks:
        tensor = _tensor_at(m, loc)
        stored = numpy_helper.to_array(tensor)
        value = g.tensor(loc).detach().numpy().reshape(stored.shape)
        quant = g.constants[loc].quant
        if quant is not None and quant.bias_of is not None:
            continue  # after the scales it is quantised with (below)
        if quant is not None and quant.rounds and quant.scale_name:
            value = quant.integers(value, g._get({}, quant.scale_name).detach().numpy())  # the scale it is read with
        elif quant is not None and quant.scale_name and g.by_value.get(quant.scale_name) in setup.masks:
            scales[quant.scale_name] = np.full(quant.scale.shape, max(float(np.abs(value).max()) / 127, 1e-8),
                                               np.float32)
            value = quant.integers(value, scales[quant.scale_name])
        else:
            value = quant.integers(value) if quant is not None else value.astype(stored.dtype)
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    for t in m.graph.initializer:
        if t.name in scales:
            t.CopyFrom(numpy_helper.from_array(scales[t.name].reshape(tuple(t.dims)), t.name))
    # A QLinear product's int32 bias, with its input's scale times its weight's as they are now.
    for loc, c in g.constants.items():
        if c.quant is not None and c.quant.bias_of is not None:
            tensor = _tensor_at(m, loc)
            xs, ws = (g._get({}, v).detach().numpy().astype(np.float32) for v in c.quant.bias_of)
            value = g.tensor(loc).detach().numpy().reshape(tuple(tensor.dims))
            tensor.CopyFrom(numpy_helper.from_array(c.quant.integers(value, (xs * ws).reshape(-1)), tensor.name))
    return m


# The repeated message fields a locator steps through, by message and field number.
_FIELDS = {"ModelProto": {7: "graph", 25: "functions"}, "GraphProto": {1: "node", 5: "initializer"},
           "FunctionProto": {7: "node"}, "NodeProto": {5: "attribute"}, "AttributeProto": {5: "t", 6: "g", 11: "graphs"}}


def _tensor_at(m: onnx.ModelProto, locator: str) -> onnx.TensorProto:
    """The tensor a locator (docs/format.md §4: field.index steps) names in ``m``: an
    initializer or a ``Constant``'s value, of the main graph, a subgraph or a local function."""
    at = m
    try:
        for step in locator.split("/"):
            field, index = (int(v) for v in step.split("."))
            value = getattr(at, _FIELDS[type(at).__name__][field])
            at = value if isinstance(value, onnx.TensorProto | onnx.GraphProto) and index == 0 else value[index]
    except (KeyError, IndexError, ValueError, TypeError):
        at = None
    if not isinstance(at, onnx.TensorProto):
        raise AttackError(f"locator {locator} is not an initializer or a Constant value of the model")
    return at


# ---------------------------------------------------------------- policy search

from ._policy_search import SEARCH, plan, policy_search, policy_toml  # noqa: E402,F401


# ---------------------------------------------------------------- command line


def _load_npz(path: str) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]:
    """The inputs (``x`` alone: an array; else every array but ``y`` by name) and the labels."""
    try:
        with np.load(path, allow_pickle=False) as z:
            x = {k: z[k] for k in z.files if k != "y"}
            if not x:
                raise KeyError("no input array")
            return (x["x"] if list(x) == ["x"] else x), z["y"]
    except (OSError, KeyError, ValueError) as e:
        raise AttackError(f"{path}: not an .npz file with arrays x (or one per input) and y ({e})") from e


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m onnx_protect.assess", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the protected model (with --search: the plain model)")
    ap.add_argument("--data", required=True,
                    help="the attacker's labelled data: .npz with y and x (or one array per model input, by name)")
    ap.add_argument("--test", required=True, help="labelled test data: .npz as --data")
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="fractions of --data (default 0.01,0.05,0.1)")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--target", type=float, default=TARGET, help="largest acceptable gap (default 0.02)")
    ap.add_argument("--search", action="store_true", help="find the cheapest search point that holds")
    ap.add_argument("--screen-seeds", type=int, default=1,
                    help="with --search: draws per size of the screening pass (default 1); --seeds confirm")
    ap.add_argument("--max-seeds", type=int, default=MAX_SEEDS,
                    help=f"with --search: most draws for a point whose gap's bound is above the target and "
                         f"mean under it (default {MAX_SEEDS})")
    ap.add_argument("--lr-choice", choices=LR_CHOICES,
                    help="held_out: each run's rate chosen on a held-out fifth of the draw; best: the best test "
                         "accuracy over the rates (default: held_out; with --search best)")
    ap.add_argument("--recipes", help=f"comma-separated, of {', '.join(RECIPES)} (default: one-cycle; "
                                      "with --search both)")
    ap.add_argument("--no-augment", action="store_true", help="no shift augmentation of image inputs")
    ap.add_argument("--no-batchnorm", action="store_true",
                    help="scratch without the BatchNorm re-inserted after Conv layers whose norm the export folded")
    ap.add_argument("--json", help="write the report here ('-': standard output)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        sizes = [float(s) for s in args.sizes.split(",")]
        if not all(0 < s <= 1 for s in sizes) or min(args.seeds, args.steps, args.screen_seeds) < 1:
            raise AttackError("--sizes must be in (0, 1]; --seeds, --screen-seeds and --steps at least 1")
        x, y = _load_npz(args.data)
        xt, yt = _load_npz(args.test)
        say = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
        kw = dict(sizes=sizes, seeds=args.seeds, steps=args.steps, target=args.target, progress=say,
                  augment=not args.no_augment, batchnorm=not args.no_batchnorm)
        if args.lr_choice:
            kw["lr_choice"] = args.lr_choice
        if args.recipes:
            kw["recipes"] = tuple(r.strip() for r in args.recipes.split(","))
            bad = [r for r in kw["recipes"] if r not in RECIPES]
            if bad:
                raise AttackError(f"--recipes: unknown recipe {bad[0]!r}; recipes are {', '.join(RECIPES)}")
        if args.search:
            r = policy_search(args.model, x, y, xt, yt, screen_seeds=args.screen_seeds, max_seeds=args.max_seeds,
                              **kw)
            text = "\n\n".join(f"{p['point']}{''.join(f' = {q}' for q in p['same'])} ({p['stage']}):\n"
                                 f"{_summary(p)}" for p in r["points"])
            text += f"\n\nchosen: {r['chosen'] or 'none of the points holds'}"
            if r["chosen"]:
                text += "\n" + r["points"][-1]["policy"]
        else:
            r = attack(args.model, x, y, xt, yt, **kw)
            text = _summary(r)
    except (AttackError, LabelError, tg.Unsupported, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json == "-":
        print(json.dumps(r, indent=1))
    else:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=1)
        print(text)
    if args.search:
        return 0 if r["chosen"] else 3
    return 0 if r["holds"] else 3

