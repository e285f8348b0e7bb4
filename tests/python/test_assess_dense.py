"""``onnx_protect.assess`` on models whose scores have a class per position: a segmentation
net (``[N, C, H, W]`` scores, ``[N, H, W]`` labels) and a token classifier (``[N, S, C]``
scores, ``[N, S]`` labels with ``-100`` on padding); and on a regressor (float targets, scored
by R²). Each is exported by ``torch.onnx.export`` and briefly trained here on data made from
fixtures/digits and a seeded generator. Budgets are a few dozen steps and one draw: what is
checked is what is scored and how, not a study's numbers.
"""
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training attacks need torch (tests/requirements.txt)")
onnx = pytest.importorskip("onnx", reason="the training attacks need onnx (tests/requirements.txt)")
ort = pytest.importorskip("onnxruntime", reason="the interpreter check needs onnxruntime")

import onnx_protect  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx_protect import _labels, assess  # noqa: E402
from onnx_protect import _torch_graph as tg  # noqa: E402

nn = torch.nn
DIGITS = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "digits"
TINY = dict(sizes=(0.1,), seeds=1, steps=40, lrs=(1e-2,))


def pixel_labels(x, y):
    """Each pixel of a digit image: 2 where its ink is over 0.6 of the image's brightest,
    1 where over 0.25, else 0 (3 classes; ``y``, the digits, is not used)."""
    rel = x[:, 0] / x.max(axis=(1, 2, 3))[:, None, None]
    return np.where(rel > 0.6, 2, np.where(rel > 0.25, 1, 0)).astype(np.int64)


@pytest.fixture(scope="module")
def seg_data():
    tr_x, tr_y = np.load(DIGITS / "train_x.npy"), np.load(DIGITS / "train_y.npy")
    te_x, te_y = np.load(DIGITS / "test_x.npy"), np.load(DIGITS / "test_y.npy")
    return tr_x, pixel_labels(tr_x, tr_y), te_x, pixel_labels(te_x, te_y)


class Segmenter(nn.Module):
    """Two 3x3 convolutions, their features plus their image-wide mean, a 1x1 convolution
    to 3 scores per pixel, then Softmax over the classes (axis 1)."""

    def __init__(self, w=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1), nn.ReLU(), nn.Conv2d(w, w, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(w, 3, 1)

    def forward(self, x):
        f = self.body(x)
        return self.head(f + f.mean((2, 3), keepdim=True)).softmax(1)


class Tagger(nn.Module):
    """Token embeddings, a 1-D convolution over the sequence, 3 scores per token."""

    def __init__(self, vocab=20, d=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.conv = nn.Conv1d(d, d, 3, 1, 1)
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        h = torch.relu(self.conv(self.emb(ids).transpose(1, 2))).transpose(1, 2)
        return self.head(h)


def tokens(n, seed):
    """Sequences of 12 token ids (0 is padding, at the end of each), each token's label its
    id modulo 3 plus whether the token before it is even, -100 on padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 20, size=(n, 12))
    lengths = rng.integers(6, 13, size=n)
    pad = np.arange(12)[None, :] >= lengths[:, None]
    ids[pad] = 0
    before = np.concatenate([np.zeros((n, 1), np.int64), ids[:, :-1]], axis=1)
    y = (ids + (before % 2 == 0)) % 3
    y[pad] = _labels.IGNORE
    return ids.astype(np.int64), y.astype(np.int64)


def export(net, x, y, path, steps=60):
    """A few Adam steps on (x, y) with the labelled positions' cross-entropy, then the export
    with a dynamic batch axis."""
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for i in range(steps):
        idx = torch.arange(i * 32, i * 32 + 32) % len(xt)
        out = net(xt[idx])
        if isinstance(net, Segmenter):
            out = out.clamp_min(1e-9).log()  # the Softmax's input up to a constant per pixel
        loss = _labels.loss(out, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (xt[:2],), str(path), dynamo=False, input_names=["x"], output_names=["s"],
                          dynamic_axes={"x": {0: "b"}, "s": {0: "b"}})
    return path


def ort_accuracy(path, x, y, axis):
    """The share of labelled positions whose highest onnxruntime score is their label."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = s.run(None, {s.get_inputs()[0].name: x})[0]
    labelled = y != _labels.IGNORE
    return float(((scores.argmax(axis) == y) & labelled).sum() / labelled.sum())


def test_the_class_axis_is_the_one_the_labels_lack():
    assert _labels.class_axis((8, 10), (8,)) == 1
    assert _labels.class_axis((8, 12, 3), (8, 12)) == 2  # tokens: the last first below rank 4
    assert _labels.class_axis((8, 5, 30), (8, 30)) == 1  # a 1-D map [N, C, L]
    assert _labels.class_axis((8, 11, 8, 8), (8, 8, 8)) == 1  # an image map: the second first
    assert _labels.class_axis((8, 8, 8, 11), (8, 8, 8)) == 3
    for scores, labels in [((8, 10), (8, 10)), ((8, 11, 8, 8), (8,)), ((8, 10), (4,)), ((8,), (8,))]:
        with pytest.raises(_labels.LabelError, match="do not fit the model's scores"):
            _labels.class_axis(scores, labels)


def test_scores_count_every_labelled_position_and_skip_the_ignored():
    """Scores [N, C, H, W] from an Identity graph: accuracy and mean cross-entropy over the
    positions whose label is not -100, as NumPy computes them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 3, 2)).astype(np.float32)
    y = rng.integers(0, 4, size=(5, 3, 2))
    y[rng.random(y.shape) < 0.3] = _labels.IGNORE
    node = helper.make_node("Identity", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 2])])
    graph = tg.TorchGraph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    acc, loss = assess.scores(graph, x, y)
    lab = y != _labels.IGNORE
    assert acc == pytest.approx(((x.argmax(1) == y) & lab).sum() / lab.sum())
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    picked = np.take_along_axis(logp, np.where(lab, y, 0)[:, None], 1)[:, 0]
    assert loss == pytest.approx(-picked[lab].mean(), rel=1e-5)
    assert _labels.chance(y) == pytest.approx(np.bincount(y[lab]).max() / lab.sum())


def test_assess_scores_a_segmentation_net_per_pixel(tmp_path, seg_data):
    """Scored before the final Softmax over axis 1, per pixel: the interpreter's accuracy of the
    plain export is onnxruntime's; the attacks run on the protected file, the shift augmentation
    moving each label map with its image, chance the background's share."""
    tr_x, tr_y, te_x, te_y = seg_data
    torch.manual_seed(0)
    plain = export(Segmenter(), tr_x, tr_y, tmp_path / "seg.onnx")
    model = onnx.load(plain)
    g = tg.TorchGraph(model)
    assert g.read == model.graph.node[-1].input[0] and model.graph.node[-1].op_type == "Softmax"
    want = ort_accuracy(plain, te_x, te_y, 1)
    assert assess.accuracy(g, te_x, te_y) == pytest.approx(want, abs=1e-9)
    assert want > _labels.chance(te_y) + 0.05, want  # the export learnt more than the background
    enc = tmp_path / "seg.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, tr_x, tr_y, te_x, te_y, **TINY)
    assert r["share"] == 1.0 and r["augmentation"] == "shifts of up to 1 pixel, label maps moved with the images"
    assert r["chance"] == pytest.approx(float((te_y == 0).mean()))
    row = r["sizes"][0]
    assert row["samples"] == [int(round(0.1 * len(tr_y)))]
    for name in ("start", "scratch", "relearn", "finetune"):
        assert 0.0 <= row[name][0] <= 1.0, row


def test_assess_scores_a_token_classifier_per_token_and_skips_padding(tmp_path):
    tr_x, tr_y = tokens(600, 1)
    te_x, te_y = tokens(200, 2)
    torch.manual_seed(0)
    plain = export(Tagger(), tr_x, tr_y, tmp_path / "tagger.onnx", steps=150)
    g = tg.TorchGraph(onnx.load(plain))
    want = ort_accuracy(plain, te_x, te_y, 2)
    assert assess.accuracy(g, te_x, te_y) == pytest.approx(want, abs=1e-9)
    assert want > 0.6, want  # chance is about a third
    enc = tmp_path / "tagger.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, tr_x, tr_y, te_x, te_y, **TINY)
    lab = te_y != _labels.IGNORE
    assert r["chance"] == pytest.approx(np.bincount(te_y[lab]).max() / lab.sum())
    assert 0.0 <= r["sizes"][0]["scratch"][0] <= 1.0


def test_labels_that_do_not_fit_the_scores_are_a_one_line_error_and_exit_1(tmp_path, seg_data, capsys):
    tr_x, tr_y, te_x, te_y = seg_data
    plain = export(Segmenter(), tr_x[:64], tr_y[:64], tmp_path / "seg.onnx", steps=1)
    enc = tmp_path / "seg.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    cases = [
        (np.zeros(40, np.int64), "labels of shape [40] do not fit the model's scores of shape ['N', 3, 8, 8]"),
        (np.full((40, 8, 8), 3, np.int64), "label 3 at sample 0 is not a class of the model's 3"),
        (np.full((40, 8, 8), _labels.IGNORE, np.int64), "every label is -100: nothing to score"),
    ]
    for y, want in cases:
        bad = tmp_path / "bad.npz"
        np.savez(bad, x=te_x[:40], y=y)
        good = tmp_path / "good.npz"
        np.savez(good, x=te_x[:40], y=te_y[:40])
        assert assess.main([str(enc), "--data", str(bad), "--test", str(good), "--steps", "2", "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: labels of the data") and want in err, err
        assert err.count("\n") == 1 and "Traceback" not in err, err


def test_assess_runs_on_torchvisions_lraspp_segmenter(tmp_path):
    """torchvision's LR-ASPP MobileNetV3 (random initialisation, 3 classes, 64 × 64 images:
    Resize, HardSwish, a squeeze-and-excitation gate), its `out` map exported with a dynamic
    batch: the interpreter matches onnxruntime and the attacks score it per pixel."""
    torchvision = pytest.importorskip("torchvision", reason="tests/requirements-torch.txt")

    class Out(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)["out"]

    torch.manual_seed(0)
    net = Out(torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                          num_classes=3)).eval()
    plain = tmp_path / "lraspp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 64, 64),), str(plain), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17)
    x = np.random.default_rng(0).standard_normal((40, 3, 64, 64)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    assert tg.check(onnx.load(plain), x[:4]) <= 1e-4
    enc = tmp_path / "lraspp.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, x, y, x[:8], y[:8], sizes=(0.5,), seeds=1, steps=3, lrs=(1e-2,))
    assert r["share"] == 1.0 and r["augmentation"] == "shifts of up to 4 pixels, label maps moved with the images"
    assert r["chance"] == pytest.approx(_labels.chance(y[:8]))
    assert all(0.0 <= r["sizes"][0][k][0] <= 1.0 for k in ("scratch", "relearn", "finetune"))


def test_assess_scores_a_regressor_by_r2(tmp_path, seg_data, capsys):
    """Float labels are regression targets: a digits MLP predicting each image's ink share and
    its top row's mean (2 outputs) is scored by R² over both, clipped at 0, trained on the mean
    squared error; chance is 0 (the targets' mean); targets of another shape, or labels of
    two kinds, are refused in one line."""
    tr_x, _, te_x, _ = seg_data

    def targets(x):
        return np.stack([(x > 0.5).mean(axis=(1, 2, 3)), x[:, 0, 0].mean(axis=1)], 1).astype(np.float32)

    tr_y, te_y = targets(tr_x), targets(te_x)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    plain = export(net, tr_x, tr_y, tmp_path / "reg.onnx", steps=200)
    g = tg.TorchGraph(onnx.load(plain))
    s = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    pred = s.run(None, {"x": te_x})[0]
    want = 1 - np.square(pred - te_y).sum() / np.square(te_y - te_y.mean(axis=0)).sum()
    r2, mse = assess.scores(g, te_x, te_y)
    assert want > 0.5 and r2 == pytest.approx(want, abs=1e-5), (r2, want)
    assert mse == pytest.approx(np.square(pred - te_y).mean(), rel=1e-4)
    enc = tmp_path / "reg.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, tr_x, tr_y, te_x, te_y, **TINY)
    assert r["metric"] == "r2" and r["chance"] == 0.0 and r["share"] == 1.0
    row = r["sizes"][0]
    assert row["samples"] == [int(round(0.1 * len(tr_y)))]
    assert all(0.0 <= row[k][0] <= 1.0 for k in ("start", "scratch", "relearn", "finetune")), row
    assert row["scratch"][0] > 0.2, row  # trained on the squared error: better than the mean

    for y, y_test, want in [(tr_y[:, :1], te_y, "regression targets of shape [1257, 1] do not fit the model's "
                                                 "outputs of shape ['N', 2]"),
                            (tr_y, (te_y > 0.2).astype(np.int64)[:, 0], "differ in kind")]:
        data, test = tmp_path / "d.npz", tmp_path / "t.npz"
        np.savez(data, x=tr_x, y=y)
        np.savez(test, x=te_x, y=y_test)
        assert assess.main([str(enc), "--data", str(data), "--test", str(test), "--steps", "2", "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and want in err and err.count("\n") == 1, err


def test_classes_saved_as_floats_stay_classes(tmp_path):
    """Whole-number float labels that do not have the output's shape (a classifier's labels
    written by a float pipeline) are classes, not regression targets; strings are refused."""
    digits = [np.load(DIGITS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]
    enc = tmp_path / "mlp.enc.onnx"
    onnx_protect.encrypt(DIGITS.parent / "zoo" / "digits" / "mlp.onnx", enc, key=onnx_protect.new_key())
    r = assess.attack(enc, digits[0], digits[1].astype(np.float64), digits[2], digits[3].astype(np.float32),
                      sizes=(0.05,), seeds=1, steps=5, lrs=(1e-2,))
    assert r["metric"] == "accuracy" and r["chance"] == pytest.approx(np.bincount(digits[3]).max() / len(digits[3]))
    with pytest.raises(_labels.LabelError, match="labels of type <U1"):
        _labels.as_labels((2, 10), np.array(list("abc")))


def test_a_label_map_moves_with_its_image_and_uncovered_pixels_are_not_scored():
    """Shifting an image whose pixels are their own labels (NCHW and NHWC alike): every
    shifted pixel still carries its label, and the pixels the shift uncovers are -100."""
    from onnx_protect import _augment

    gen = torch.Generator().manual_seed(4)
    y = torch.randint(1, 5, (6, 12, 12))
    x = y[:, None].float()
    xs, ys = _augment.shifted_with(x, y, 3, gen)
    assert _augment.label_map(x.shape, y.numpy()) and not _augment.label_map(x.shape, y.numpy().astype(np.float32))
    covered = ys != _labels.IGNORE
    assert bool((xs[:, 0][covered] == ys[covered].float()).all()) and bool((xs[:, 0][~covered] == 0).all())
    assert 0 < int((~covered).sum()) < ys.numel()
    gen = torch.Generator().manual_seed(4)
    xl, yl = _augment.shifted_with(x.permute(0, 2, 3, 1), y, 3, gen)  # channels last: the same offsets
    assert torch.equal(xl.permute(0, 3, 1, 2), xs) and torch.equal(yl, ys)
