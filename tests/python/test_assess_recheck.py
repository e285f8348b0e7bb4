"""A policy that ``onnx_protect.assess.policy_search`` recommends, re-checked by attacks
written here, independently of ``assess`` and of its ONNX interpreter, on one model of
each family of the zoo (fixtures/zoo/README.md) that no other test of the search uses:
the vowels MLP, CNN, GRU and ViT.

The search runs with its default recipe (300 steps, screening at one draw, confirmation
at three, every run the best test accuracy of three learning rates with each of its two
recipes) at one data size, 5% of the training split. On a cheaper search (150 steps,
one learning rate) it recommended ``first`` (fc1 alone encrypted) on the MLP, which the
re-check below refuses (a gap of +2.3 points). The
re-check attacks the recommended protection as an attacker holding the file would, with
its own code: the architecture written as a PyTorch module (:class:`MLP`, :class:`CNN`,
:class:`GRU`, :class:`ViT`), the weights of the file decrypted with the key and put
into the module (:func:`module_arrays`), every encrypted element (the public positions
of ``inspect``) replaced by PyTorch's own default initialisation of its module, then
trained on its own stratified draws of 5% of the training split (three of them) with
another recipe (full-batch Adam, a constant learning rate, 200 steps): ``finetune``
trains every weight, ``relearn`` only the encrypted elements. Scratch is the same module
freshly initialised and trained the same way (for the CNN, the better of it and the module
with a BatchNorm after each Conv). Each run takes the best test accuracy
over three learning rates (the same oracle for the attacks and for scratch). Before the
attacks, the module on the decrypted weights must give onnxruntime's outputs on the
test split within 1e-4. The recommendation holds when the best attack's mean gap over
scratch is at most the search's target, 2 points.

A family whose test takes over a minute runs only with ``ONNX_PROTECT_RECHECK_ALL=1``;
one whose recommendation is refused is an expected failure (``xfail``, strict) whose
reason gives the measured gaps.
"""
import os
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training attacks need torch (tests/requirements.txt)")
onnx = pytest.importorskip("onnx", reason="the training attacks need onnx (tests/requirements.txt)")
ort = pytest.importorskip("onnxruntime", reason="the interpreter check needs onnxruntime")

import onnx_protect  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from onnx_protect import assess  # noqa: E402

nn = torch.nn
F = torch.nn.functional
ROOT = pathlib.Path(__file__).resolve().parents[2]
VOWELS = ROOT / "fixtures" / "zoo" / "vowels"
SEARCH_BUDGET = dict(sizes=(0.05,), seeds=3)
LRS = (1e-3, 3e-3, 1e-2)
STEPS = 200
ALL = os.environ.get("ONNX_PROTECT_RECHECK_ALL") == "1"


class MLP(nn.Module):
    """vowels/mlp: the 29 x 12 frames flattened, 348 -> 128 -> 64 -> 9 with ReLU."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(348, 128), nn.Linear(128, 64), nn.Linear(64, 9)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


class CNN(nn.Module):
    """vowels/cnn: the frames x coefficients as a one-channel image, Conv 3x3 (16, 32
    channels, padding 1) with ReLU, 2 x 2 max-pool, Conv 3x3 (64) with ReLU, mean over
    the image, a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64, 9)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc(F.relu(self.conv3(h)).mean((2, 3)))


class CNNWithBatchNorm(CNN):
    """The same network with a BatchNorm after each Conv: what an attacker training from
    scratch would also try (and the reference ``assess`` builds for a Conv followed by an
    activation)."""

    def __init__(self):
        super().__init__()
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(16), nn.BatchNorm2d(32), nn.BatchNorm2d(64)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x[:, None])))
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.fc(F.relu(self.bn3(self.conv3(h))).mean((2, 3)))


# Scratch is the best of these networks trained from a fresh start (the architecture
# itself always among them).
SCRATCH = {CNN: (CNN, CNNWithBatchNorm)}


class GRU(nn.Module):
    """vowels/gru: a GRU (hidden 64, zero initial state) over the 29 frames, the mean of
    its outputs, a linear head."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(12, 64, batch_first=True)
        self.head = nn.Linear(64, 9)

    def forward(self, x):
        return self.head(self.rnn(x)[0].mean(1))


class Block(nn.Module):
    """A pre-norm encoder layer: LayerNorm, 4-head attention, residual; LayerNorm, Linear
    48 -> 96, exact GELU, Linear 96 -> 48, residual."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(48), nn.LayerNorm(48)
        self.attn = nn.MultiheadAttention(48, 4, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(48, 96), nn.Linear(96, 48)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    """vowels/vit: a token per frame (Linear 12 -> 48 plus a learned position embedding,
    drawn from N(0, 0.02) as ViTs do; PyTorch has no default for a bare parameter), two
    :class:`Block`, a final LayerNorm, the mean over tokens, a linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 48)
        self.pos_embed = nn.Parameter(torch.randn(1, 29, 48) * 0.02)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(48)
        self.head = nn.Linear(48, 9)

    def forward(self, x):
        x = self.embed(x) + self.pos_embed
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x).mean(1))


def module_arrays(model, arrays, keys):
    """The module's parameters (``keys``: state-dict name -> shape) from arrays named as
    the file's initializers (float weights, or boolean masks: the same moves apply), and
    the initializer names used. A name the module shares is taken as stored; the weight
    of a MatMul by a constant whose output an ``Add`` of the initializer ``P.bias`` (or
    ``P_bias``) reads is ``P.weight`` (``P_weight``), stored transposed; an ONNX ``GRU``'s
    W and B (gates z, r, h) are PyTorch's ``weight_ih_l0``, ``bias_ih_l0`` and
    ``bias_hh_l0`` (gates r, z, n) of the module whose ``weight_hh_l0`` its R is computed
    from."""
    out, used = {}, set()
    for k in keys:
        if k in arrays:
            out[k] = arrays[k]
            used.add(k)
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in arrays:
            for add in readers.get(n.output[0], []):
                bias = [i for i in add.input if i != n.output[0]]
                if add.op_type == "Add" and len(bias) == 1 and bias[0].endswith("bias") and bias[0] in keys:
                    out[bias[0][:-4] + "weight"] = arrays[n.input[1]].T
                    used.add(n.input[1])
        if n.op_type == "GRU":
            prefix = next(k[:-len("weight_hh_l0")] for k in keys if k.endswith("weight_hh_l0"))
            w, b = arrays[n.input[1]][0], arrays[n.input[3]][0]
            hid = w.shape[0] // 3

            def gates(a):  # ONNX z, r, h -> PyTorch r, z, n
                return np.concatenate([a[hid:2 * hid], a[:hid], a[2 * hid:]])
            out[prefix + "weight_ih_l0"] = gates(w)
            out[prefix + "bias_ih_l0"], out[prefix + "bias_hh_l0"] = gates(b[:3 * hid]), gates(b[3 * hid:])
            used.update((n.input[1], n.input[3]))
    assert set(out) == set(keys), sorted(set(keys) ^ set(out))
    return {k: np.ascontiguousarray(out[k]).reshape(keys[k]) for k in keys}, used


class Protected:
    """The decrypted file as the module's weights, and the encrypted elements as the
    module's masks (state-dict name -> boolean tensor; only parameters with an encrypted
    element)."""

    def __init__(self, cls, decrypted, info):
        self.cls = cls
        self.keys = {k: tuple(v.shape) for k, v in cls().state_dict().items()}
        stored = {t.name: numpy_helper.to_array(t) for t in decrypted.graph.initializer}
        weights, used = module_arrays(decrypted, stored, self.keys)
        self.weights = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
        flat = {}
        for t in info["protection"]["tensors"]:
            assert t["data_type"] == "FLOAT", t
            mask = flat.setdefault(t["name"], np.zeros(stored[t["name"]].size, bool))
            for a, b in t["spans"]:
                mask[a // 4:-(-b // 4)] = True
        # Every encrypted element lands in a parameter of the module.
        assert set(flat) <= used, sorted(set(flat) - used)
        masks, _ = module_arrays(decrypted, {k: flat[k].reshape(v.shape) if k in flat else np.zeros(v.shape, bool)
                                             for k, v in stored.items()}, self.keys)
        assert sum(int(m.sum()) for m in masks.values()) == sum(int(m.sum()) for m in flat.values())
        self.masks = {k: torch.from_numpy(m) for k, m in masks.items() if m.any()}

    def attacked(self, seed, masks=None):
        """The module with the decrypted weights, every element of ``masks`` (default:
        the encrypted ones) replaced by a fresh PyTorch default initialisation (drawn
        under ``seed``)."""
        masks = self.masks if masks is None else masks
        torch.manual_seed(seed)
        fresh = self.cls().state_dict()
        net = self.cls()
        net.load_state_dict({k: torch.where(masks[k], fresh[k], v) if k in masks else v
                             for k, v in self.weights.items()})
        return net


def fit(net, x, y, lr, masks=None):
    """Full-batch Adam at a constant rate. With ``masks``, only the masked elements
    train (the gradient of every clear element is zeroed; plain Adam leaves a parameter
    with zero gradients where it is)."""
    params = dict(net.named_parameters())
    if masks is not None:
        for name, p in params.items():
            if name in masks:
                p.register_hook(lambda g, m=masks[name]: g * m)
            else:
                p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in params.values() if p.requires_grad], lr=lr)
    net.train()
    for _ in range(STEPS):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def accuracy(net, x, y):
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


class Refused(AssertionError):
    """The recommendation does not hold against the attacks here."""


def over_a_minute(name, seconds):
    return pytest.mark.skipif(not ALL, reason=f"vowels/{name}: the search and the re-check take about {seconds} s on "
                              "one core, over the suite's minute; set ONNX_PROTECT_RECHECK_ALL=1 to run them")


def refused(text):
    return pytest.mark.xfail(raises=Refused, strict=True, reason=text)


FAMILIES = [
    pytest.param("mlp", MLP, id="mlp"),
    pytest.param("cnn", CNN, id="cnn", marks=over_a_minute("cnn", 440)),
    pytest.param("gru", GRU, id="gru", marks=[over_a_minute("gru", 490), refused(
        "the search's last+first (21.0% of the weight bytes, the search's gap -2.7) is refused: relearn reaches "
        "74.1 / 72.2 / 73.0% against scratch's 70.0 / 68.4 / 64.3%, gaps +4.1 / +3.8 / +8.6, mean +5.5 points")]),
    pytest.param("vit", ViT, id="vit", marks=over_a_minute("vit", 470)),
]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recheck(model, cls, policy_text, data, tmp_path, draws=3):
    """The independent attacks on ``model`` encrypted under ``policy_text``: per draw of
    the data (``draws`` of them), the best test accuracy of scratch, finetune and relearn,
    and the best attack's gap over scratch."""
    key = onnx_protect.new_key()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text)
    enc, dec = tmp_path / "enc.onnx", tmp_path / "dec.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # encrypt's word on the share left clear
        onnx_protect.encrypt(model, enc, key=key, policy=policy)
    onnx_protect.decrypt(enc, dec, key=key)
    p = Protected(cls, onnx.load(dec), onnx_protect.inspect(enc))
    assert p.masks, "the policy encrypts nothing the module has"
    x, y, xt, yt = (torch.from_numpy(a) for a in data)
    x, xt = x.float(), xt.float()

    # The module is the file's network: on the decrypted weights it gives onnxruntime's outputs.
    sess = ort.InferenceSession(str(dec), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        mine = p.attacked(0, masks={})(xt).numpy()
    np.testing.assert_allclose(mine, sess.run(None, {sess.get_inputs()[0].name: data[2]})[0], atol=1e-4)
    # The reset is real: the protected network starts near chance.
    assert accuracy(p.attacked(1), xt, yt) < 0.5

    gaps, runs = [], []
    for draw in range(draws):
        rng = np.random.default_rng(500 + draw)  # draws of this test's own, not the search's
        idx = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(data[1] == c), max(1, round(0.05 * np.sum(data[1] == c))), replace=False)
            for c in np.unique(data[1])]))
        best = {}
        for kind in ("scratch", "finetune", "relearn"):
            acc = []
            for lr in LRS:
                torch.manual_seed(900 + draw)
                if kind == "scratch":
                    for arch in SCRATCH.get(cls, (cls,)):
                        torch.manual_seed(900 + draw)
                        acc.append(accuracy(fit(arch(), x[idx], y[idx], lr), xt, yt))
                    continue
                net = fit(p.attacked(700 + draw), x[idx], y[idx], lr, masks=p.masks if kind == "relearn" else None)
                acc.append(accuracy(net, xt, yt))
            best[kind] = max(acc)
        assert best["scratch"] > 0.5, best  # scratch learns: the comparison means something
        runs.append(best)
        gaps.append(max(best["finetune"], best["relearn"]) - best["scratch"])
    return gaps, runs


@pytest.mark.parametrize("name, cls", FAMILIES)
def test_a_searched_recommendation_holds_against_independent_attacks(name, cls, tmp_path, one_thread):
    model = VOWELS / f"{name}.onnx"
    data = [np.load(VOWELS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]
    r = assess.policy_search(model, *data, **SEARCH_BUDGET)
    chosen = r["chosen"]
    assert chosen is not None, [(p["point"], p["gap"]) for p in r["points"]]
    final = r["points"][-1]
    # Recommended only after the attacks at three draws.
    assert final["point"] == chosen and final["stage"] == "confirmation" and final["seeds"] == 3 and final["holds"]
    assert all(len(v) == 3 for k, v in final["sizes"][0].items() if k in ("scratch", "relearn", "finetune"))
    gaps, runs = recheck(model, cls, final["policy"], data, tmp_path)
    if float(np.mean(gaps)) > r["target"]:
        raise Refused(f"{chosen}: gaps {[round(100 * g, 1) for g in gaps]} points over scratch, per draw {runs}")
