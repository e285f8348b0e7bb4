"""The model zoo's README table states what onnxruntime measures.

For every row of fixtures/zoo/README.md: the model's onnxruntime accuracy on its
data set's test split, its file size, the chance level (the most frequent test
class) and the opset are the table's; every zoo model has a row.
"""
import pathlib
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ZOO = ROOT / "fixtures" / "zoo"
ROW = re.compile(
    r"^\| (?P<ds>\w+) \| (?P<model>[\w-]+) \| (?P<params>[\d,]+) \| (?P<bytes>[\d,]+) \| "
    r"(?P<acc>[01]\.\d{4}) \((?P<correct>\d+)/(?P<n>\d+)\) \| (?P<chance>[01]\.\d{4}) \| (?P<opset>\d+) \|")


def rows():
    out = [m.groupdict() for m in map(ROW.match, (ZOO / "README.md").read_text().splitlines()) if m]
    assert out, "no model rows in fixtures/zoo/README.md"
    return out


def split(ds, model=""):
    """The test split of a data set: in its zoo folder, or in fixtures/<ds> (digits). The
    models of `families/` are named after their data set (`digits-resnet`)."""
    if ds == "families":
        ds = model.split("-")[0]
    for d in (ZOO / ds, ROOT / "fixtures" / ds):
        if (d / "test_x.npy").exists():
            return np.load(d / "test_x.npy"), np.load(d / "test_y.npy")
    raise AssertionError(f"no test split for {ds}")


def test_every_zoo_classifier_has_a_row():
    listed = {(r["ds"], r["model"]) for r in rows()}
    on_disk = {(p.parent.name, p.stem) for p in ZOO.glob("*/*.onnx") if p.parent.name != "ops"}
    assert listed == on_disk


@pytest.mark.parametrize("row", rows(), ids=lambda r: f"{r['ds']}/{r['model']}")
def test_onnxruntime_accuracy_is_the_table_s(row):
    path = ZOO / row["ds"] / f"{row['model']}.onnx"
    x, y = split(row["ds"], row["model"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    correct = int((logits.argmax(1) == y).sum())
    assert (correct, len(y)) == (int(row["correct"]), int(row["n"]))
    assert f"{correct / len(y):.4f}" == row["acc"]
    assert f"{np.bincount(y).max() / len(y):.4f}" == row["chance"]
    assert path.stat().st_size == int(row["bytes"].replace(",", ""))
    m = onnx.load(str(path))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == int(row["opset"])


def test_stored_reference_outputs_are_onnxruntime_s():
    """The `<model>.ref.npy` files the Rust test compares tract with, for the inputs
    `<model>.x.npy` (operator probes) or the folder's `ref_x.npy` (classifiers)."""
    for path in sorted(ZOO.glob("*/*.onnx")):
        own = path.with_suffix(".x.npy")
        x = np.load(own if own.exists() else path.parent / "ref_x.npy")
        want = np.load(path.parent / f"{path.stem}.ref.npy")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(path))
