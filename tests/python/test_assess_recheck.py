"""A policy that ``onnx_protect.assess.policy_search`` recommends, re-checked by attacks
written here, independently of ``assess`` and of its ONNX interpreter, on one model of
each family of the zoo (fixtures/zoo/README.md): the vowels MLP, CNN, GRU and ViT (no
other test of the search uses them), the digits ConvMixer, the ResNet and transformer
encoder of fixtures/zoo/families, the osuleaf 1-D CNN.

The search runs with its default recipe (300 steps, screening at one draw, confirmation
at three draws and more while the upper bound of the gap is over the target and its mean
is not, every run the best test accuracy of three learning rates with each of its two
recipes) at one data size, 5% of the training split. On a cheaper search (150 steps,
one learning rate) it recommended ``first`` (fc1 alone encrypted) on the MLP, which the
re-check below refuses (a gap of +2.3 points). The
re-check attacks the recommended protection as an attacker holding the file would, with
its own code: the architecture written as a PyTorch module (:class:`MLP`, :class:`CNN`,
:class:`GRU`, :class:`ViT`, :class:`ConvMixer`, :class:`ResNet`, :class:`Transformer`,
:class:`Conv1D`), the weights of the file decrypted with the key and put into the module
(:func:`module_arrays`), every encrypted element (the public positions of ``inspect``)
replaced by PyTorch's own default initialisation of its module, then trained on its own
stratified draws of 5% of the training split (three of them) with another recipe
(full-batch Adam, a constant learning rate, 200 steps): ``finetune`` trains every weight,
``relearn`` only the encrypted elements. Scratch is the same module freshly initialised (from
the seed of the attacks' reset: with every element encrypted the gap is 0) and trained the
same way (for the CNN, the ResNet and the 1-D CNN, whose exports folded their
normalisation or never had one, the better of it and the module with a BatchNorm after
each Conv). Each run takes the best test accuracy over three learning rates (the same
oracle for the attacks and for scratch). Before the attacks, the module on the decrypted
weights must give onnxruntime's outputs on the test split within 1e-4. The recommendation
holds when the best attack's mean gap over scratch is at most the search's target, 2
points.

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


class ConvMixer(nn.Module):
    """digits/convmixer: 2 x 2 patches (Conv 1 -> 64, stride 2), GELU, BatchNorm; four
    blocks of a depthwise 3 x 3 Conv, GELU, BatchNorm and a residual, then a pointwise
    Conv, GELU, BatchNorm; the mean over the image, a linear head."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, 64, 2, stride=2)
        self.bn0 = nn.BatchNorm2d(64)
        self.blocks = nn.ModuleList([MixerBlock() for _ in range(4)])
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.bn0(F.gelu(self.patch_embed(x)))
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean((2, 3)))


class MixerBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw, self.bn1 = nn.Conv2d(64, 64, 3, groups=64, padding=1), nn.BatchNorm2d(64)
        self.pw, self.bn2 = nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64)

    def forward(self, x):
        x = x + self.bn1(F.gelu(self.dw(x)))
        return self.bn2(F.gelu(self.pw(x)))


class ResNet(nn.Module):
    """families/digits-resnet as exported (its BatchNorms folded into the convolutions):
    a 3 x 3 stem (24 channels) with ReLU, four residual blocks (two 3 x 3 Conv, ReLU
    after the first and after the sum; 24, 24, 48 with stride 2 and a 1 x 1 projection,
    48), the mean over the image, a linear head. ``norm``: a BatchNorm after each Conv,
    as the network was trained (for scratch)."""

    def __init__(self, norm=False):
        super().__init__()
        self.stem = nn.Conv2d(1, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(24) if norm else nn.Identity()
        self.blocks = nn.Sequential(ResBlock(24, 24, 1, norm), ResBlock(24, 24, 1, norm),
                                    ResBlock(24, 48, 2, norm), ResBlock(48, 48, 1, norm))
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(self.blocks(F.relu(self.bn(self.stem(x)))).mean((2, 3)))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        bn = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1), bn(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1), bn(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), bn(cout)) if stride != 1 else None

    def forward(self, x):
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + (x if self.proj is None else self.proj(x)))


class ResNetWithBatchNorm(ResNet):
    def __init__(self):
        super().__init__(norm=True)


class Transformer(nn.Module):
    """families/vowels-transformer: a token per frame (Linear 12 -> 48 plus a learned
    position embedding, N(0, 0.02)), PyTorch's post-norm encoder (two layers, 4 heads,
    GELU MLP 96, no dropout), the mean over tokens, a linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 48)
        self.pos_embed = nn.Parameter(torch.randn(1, 29, 48) * 0.02)
        layer = nn.TransformerEncoderLayer(48, 4, 96, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(48, 9)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x) + self.pos_embed).mean(1))


class Conv1D(nn.Module):
    """osuleaf/conv1d as exported (BatchNorms folded): Conv1d 1 -> 32 (kernel 7), 32 -> 64
    (5), 64 -> 64 (3), each padded to keep the length and followed by ReLU; the mean
    over the series, a linear head. ``norm``: a BatchNorm after each Conv (for scratch)."""

    def __init__(self, norm=False):
        super().__init__()
        layers, c = [], 1
        for w, k in ((32, 7), (64, 5), (64, 3)):
            layers += [nn.Conv1d(c, w, k, padding=k // 2), nn.BatchNorm1d(w) if norm else nn.Identity(), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(64, 6)

    def forward(self, x):
        return self.head(self.features(x).mean(2))


class Conv1DWithBatchNorm(Conv1D):
    def __init__(self):
        super().__init__(norm=True)


# Scratch is the best of these networks trained from a fresh start (the architecture
# itself always among them).
SCRATCH = {CNN: (CNN, CNNWithBatchNorm), ResNet: (ResNet, ResNetWithBatchNorm), Conv1D: (Conv1D, Conv1DWithBatchNorm)}


def module_arrays(model, arrays, keys):
    """The module's parameters (``keys``: state-dict name -> shape) from arrays named as
    the file's initializers (float weights, or boolean masks: the same moves apply), and
    the initializer names used. A name the module shares is taken as stored; the weight
    of a MatMul by a constant whose output an ``Add`` of the initializer ``P.bias`` (or
    ``P_bias``) reads is ``P.weight`` (``P_weight``), stored transposed; an ONNX ``GRU``'s
    W and B (gates z, r, h) are PyTorch's ``weight_ih_l0``, ``bias_ih_l0`` and
    ``bias_hh_l0`` (gates r, z, n) of the module whose ``weight_hh_l0`` its R is computed
    from; the bias the export made of a folded BatchNorm, ``P.weight_bias``, is ``P.bias``;
    a BatchNorm's ``num_batches_tracked`` (not in the file) is 0."""
    out, used = {}, set()
    for k in keys:
        folded = k[:-len("bias")] + "weight_bias" if k.endswith(".bias") else None
        for name in (k, folded):
            if name in arrays:
                out[k] = arrays[name]
                used.add(name)
                break
        if k.endswith("num_batches_tracked"):
            out[k] = np.zeros((), np.int64)
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
        # Every encrypted element lands in a parameter of the module, but one-element
        # constants the architecture fixes (an attention scale), which the module computes.
        fixed = set(flat) - used
        assert all(stored[k].size == 1 for k in fixed), sorted(fixed)
        masks, _ = module_arrays(decrypted, {k: flat[k].reshape(v.shape) if k in flat else np.zeros(v.shape, bool)
                                             for k, v in stored.items()}, self.keys)
        assert sum(int(m.sum()) for m in masks.values()) == sum(int(flat[k].sum()) for k in used & set(flat))
        self.masks = {k: torch.from_numpy(m) for k, m in masks.items() if m.any()}

    def attacked(self, seed, masks=None):
        """The module with the decrypted weights, every element of ``masks`` (default:
        the encrypted ones) replaced by a fresh PyTorch default initialisation (drawn
        under ``seed``), in evaluation mode (BatchNorm on its running statistics)."""
        masks = self.masks if masks is None else masks
        torch.manual_seed(seed)
        fresh = self.cls().state_dict()
        net = self.cls()
        net.load_state_dict({k: torch.where(masks[k], fresh[k], v) if k in masks else v
                             for k, v in self.weights.items()})
        return net.eval()


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
    return pytest.mark.skipif(not ALL, reason=f"{name}: the search and the re-check take about {seconds} s on "
                              "one core, over the suite's minute; set ONNX_PROTECT_RECHECK_ALL=1 to run them")


def refused(text):
    return pytest.mark.xfail(raises=Refused, strict=True, reason=text)


FAMILIES = [
    pytest.param("vowels/mlp", MLP, id="mlp"),
    pytest.param("vowels/cnn", CNN, id="cnn", marks=over_a_minute("cnn", 290)),
    pytest.param("vowels/gru", GRU, id="gru", marks=over_a_minute("gru", 1950)),
    pytest.param("vowels/vit", ViT, id="vit", marks=over_a_minute("vit", 1110)),
    pytest.param("digits/convmixer", ConvMixer, id="convmixer", marks=over_a_minute("convmixer", 450)),
    pytest.param("families/digits-resnet", ResNet, id="resnet", marks=over_a_minute("resnet", 350)),
    pytest.param("families/vowels-transformer", Transformer, id="transformer",
                 marks=over_a_minute("transformer", 380)),
    pytest.param("osuleaf/conv1d", Conv1D, id="conv1d", marks=over_a_minute("conv1d", 270)),
]
# The splits each model was trained and is tested on.
DIGITS = ROOT / "fixtures" / "digits"
DATA = {"vowels": VOWELS, "digits": DIGITS, "families/digits-resnet": DIGITS, "families/vowels-transformer": VOWELS,
        "osuleaf": ROOT / "fixtures" / "zoo" / "osuleaf"}


def splits(name):
    """The model file of the zoo's ``name`` and its data: train x, y, test x, y."""
    folder = DATA[name] if name in DATA else DATA[name.split("/")[0]]
    return ROOT / "fixtures" / "zoo" / f"{name}.onnx", [np.load(folder / f"{n}.npy") for n in
                                                         ("train_x", "train_y", "test_x", "test_y")]


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

    chance = np.bincount(data[3]).max() / len(data[3])
    gaps, runs = [], []
    for draw in range(draws):
        rng = np.random.default_rng(500 + draw)  # draws of this test's own, not the search's
        idx = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(data[1] == c), max(1, round(0.05 * np.sum(data[1] == c))), replace=False)
            for c in np.unique(data[1])]))
        best = {}
        # Scratch starts from the draws of the attacks' reset: with every element
        # encrypted, scratch and the attacks are one computation and the gap is 0.
        init = 700 + draw
        for kind in ("scratch", "finetune", "relearn"):
            acc = []
            for lr in LRS:
                if kind == "scratch":
                    for arch in SCRATCH.get(cls, (cls,)):
                        torch.manual_seed(init)
                        acc.append(accuracy(fit(arch(), x[idx], y[idx], lr), xt, yt))
                    continue
                net = fit(p.attacked(init), x[idx], y[idx], lr, masks=p.masks if kind == "relearn" else None)
                acc.append(accuracy(net, xt, yt))
            best[kind] = max(acc)
        assert best["scratch"] > chance + 0.15, best  # scratch learns: the comparison means something
        runs.append(best)
        gaps.append(max(best["finetune"], best["relearn"]) - best["scratch"])
    return gaps, runs


def test_with_every_weight_encrypted_the_attacks_are_scratch(tmp_path, one_thread):
    """The re-check's own control: with every element encrypted (``all``) the attacks
    start where scratch starts and train the same way, so every gap is 0."""
    model, data = splits("vowels/mlp")
    gaps, runs = recheck(model, MLP, assess.policy_toml("all"), data, tmp_path, draws=2)
    assert gaps == [0.0, 0.0] and all(r["relearn"] == r["finetune"] == r["scratch"] for r in runs), runs


@pytest.mark.parametrize("name, cls", FAMILIES)
def test_a_searched_recommendation_holds_against_independent_attacks(name, cls, tmp_path, one_thread):
    model, data = splits(name)
    r = assess.policy_search(model, *data, **SEARCH_BUDGET)
    chosen = r["chosen"]
    assert chosen is not None, [(p["point"], p["gap"]) for p in r["points"]]
    final = r["points"][-1]
    # Recommended only after the attacks at three draws.
    assert final["point"] == chosen and final["stage"] == "confirmation" and final["seeds"] >= 3 and final["holds"]
    assert final["bound"] <= r["target"]
    row = final["sizes"][0]
    assert all(len(row[k]) == final["seeds"] for k in ("scratch", "relearn", "finetune"))
    gaps, runs = recheck(model, cls, final["policy"], data, tmp_path)
    if float(np.mean(gaps)) > r["target"]:
        raise Refused(f"{chosen}: gaps {[round(100 * g, 1) for g in gaps]} points over scratch, per draw {runs}")
