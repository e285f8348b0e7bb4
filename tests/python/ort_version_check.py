"""Run by tests/python/test_ort_versions.py inside a virtual environment holding one
onnxruntime version and the onnx_protect wheel under test (numpy, onnxruntime and
onnx_protect only: no onnx, no pytest).

    python ort_version_check.py ROOT WORKDIR

Protects fixture models into WORKDIR with the package, then checks that
onnx_protect.InferenceSession gives that onnxruntime's outputs on the plain models, bit
for bit: a single-file model, and a model with external data protected into another
folder and into its own. It also builds each external-data model through the fallback
for models whose unshared data exceeds one graph, checks that a graph naming the
sentinel '.' for a tensor that onnxruntime reads fails to load, and that options which
would write the decrypted model to disk are refused before anything is written (EP context
models switched off). Prints one
JSON object: the onnxruntime version and, per case, how the weights reached onnxruntime
(the session's ``onnx_protect_weights``); any failed check exits non-zero with a traceback.
"""
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import onnxruntime as ort

import onnx_protect as op

CPU = ["CPUExecutionProvider"]


def feeds_for(session, model):
    """The digits models' stored inputs, else seeded random floats of the declared shape."""
    (inp,) = session.get_inputs()
    stored = model.parent / "test_x.npy"
    if stored.exists():
        return {inp.name: np.load(stored)[:64]}
    shape = [d if isinstance(d, int) and d > 0 else 2 for d in inp.shape]
    return {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def same_outputs(session, plain, model, what):
    feeds = feeds_for(plain, model)
    want = plain.run(None, feeds)
    got = session.run(None, feeds)
    assert [g.tobytes() for g in got] == [w.tobytes() for w in want], f"{what}: outputs differ from the plain session's"


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


def check_refusals(protected, key, folder):
    """Each option that writes the decrypted model is refused; EP context models are
    switched off (the session has ep.context_enable "0"); the names of the files they
    write, given without them, write nothing and are not refused; no file appears."""
    before = files_in(folder)
    opt, ext = str(folder / "optimized.onnx"), ("session.optimized_model_external_initializers_file_name", "weights.out")
    ctx, ctx_path = ("ep.context_enable", "1"), ("ep.context_file_path", str(folder / "ctx.onnx"))
    refused = [("optimized_model_filepath", opt, []), ("optimized_model_filepath", opt, [ext])]
    for name, path, entries in refused:
        so = ort.SessionOptions()
        if path:
            so.optimized_model_filepath = path
        for entry, value in entries:
            so.add_session_config_entry(entry, value)
        try:
            op.InferenceSession(protected, so, CPU, key=key)
        except op.UnsafeSessionOptions as e:
            assert name in str(e), (name, str(e))
            assert all(entry in str(e) for entry, _ in entries), (entries, str(e))
        else:
            raise AssertionError(f"{name} {entries}: not refused")
    for entries in ([ctx], [ctx, ctx_path]):
        so = ort.SessionOptions()
        for entry, value in entries:
            so.add_session_config_entry(entry, value)
        s = op.InferenceSession(protected, so, CPU, key=key)
        assert s.get_session_options().get_session_config_entry("ep.context_enable") == "0", entries
    for entry, value in (ext, ctx_path):
        so = ort.SessionOptions()
        so.add_session_config_entry(entry, value)
        op.InferenceSession(protected, so, CPU, key=key)
    assert files_in(folder) == before, f"files written: {sorted(set(files_in(folder)) - set(before))}"
    return [name for name, _, _ in refused] + ["ep.context_enable (switched off)", ext[0], ctx_path[0]]


def check_sentinel_fails(work):
    """The graphs test_ort_versions.py wrote: with W supplied by add_initializer, the
    control (W in the graph too) loads and runs; the same graph with W's data at '.',
    which constant folding reads, must fail to load (the shared tensors' safety rests on
    it), not read the directory. Returns onnxruntime's message."""
    folder = work / "sentinel"
    w = np.load(folder / "W.npy")
    so = ort.SessionOptions()
    so.add_initializer("W", ort.OrtValue.ortvalue_from_numpy(w))
    x = np.ones((1, 16), np.float32)
    y = ort.InferenceSession((folder / "control.onnx").read_bytes(), so, providers=CPU).run(None, {"x": x})[0]
    assert np.allclose(y, x @ w.T, rtol=1e-5, atol=1e-5), "the control graph runs"
    try:
        ort.InferenceSession((folder / "sentinel.onnx").read_bytes(), so, providers=CPU)
    except Exception as e:  # onnxruntime's error types and messages differ between versions
        return str(e).strip().splitlines()[-1][-160:]
    raise AssertionError("onnxruntime built a session from a graph whose W is at '.'")


def main(root, work):
    key = op.new_key()
    report = {"onnxruntime": ort.__version__, "package": op.__file__, "cases": {}}
    report["sentinel read"] = check_sentinel_fails(work)
    cases = []
    for name in ("mlp", "vit"):
        plain = root / "fixtures" / "digits" / f"{name}.onnx"
        out = work / name / "model.onnx"
        op.encrypt(plain, out, key=key, coefficient=1)
        cases.append((name, plain, out))
    src = root / "fixtures" / "models" / "external_data"
    out = work / "external-other-folder" / "model.onnx"
    op.encrypt(src / "model.onnx", out, key=key, coefficient=1)
    cases.append(("external-other-folder", src / "model.onnx", out))
    same = work / "external-same-folder"
    shutil.copytree(src, same)
    op.encrypt(same / "model.onnx", same / "model.protected.onnx", key=key, coefficient=1)
    assert sorted(p.name for p in same.glob("model.protected.onnx.*")) == [
        "model.protected.onnx.1.data", "model.protected.onnx.2.data"], files_in(same)
    cases.append(("external-same-folder", src / "model.onnx", same / "model.protected.onnx"))

    for name, plain_path, protected in cases:
        plain = ort.InferenceSession(str(plain_path), providers=CPU)
        s = op.InferenceSession(protected, providers=CPU, key=key)
        assert isinstance(s, ort.InferenceSession)
        same_outputs(s, plain, plain_path, name)
        got = {"default": s.onnx_protect_weights}
        s = op.InferenceSession(protected, providers=CPU, key=key, in_place=True)
        same_outputs(s, plain, plain_path, f"{name}, in_place=True")
        got["in_place=True"] = s.onnx_protect_weights
        s = op.InferenceSession(protected, providers=CPU, key=key, in_place=False)
        same_outputs(s, plain, plain_path, f"{name}, in_place=False")
        got["in_place=False"] = s.onnx_protect_weights
        if "external" in name:
            # The fallback for models whose unshared data exceeds one graph (2 GiB), on
            # this small model: the same function InferenceSession calls for them.
            so = ort.SessionOptions()
            s = op._session._session_with_external_files(ort, np, os.fspath(protected), key, None, (), so, CPU, None, {})
            same_outputs(s, plain, plain_path, f"{name}, over-2-GiB fallback")
            got["over 2 GiB"] = s.onnx_protect_weights
            if s.onnx_protect_weights == "files_in_memory":
                try:
                    s.set_providers(CPU)
                except op.OnnxProtectError as e:
                    assert "zeroed and released" in str(e), str(e)
                else:
                    raise AssertionError(f"{name}: set_providers after the files were released")
            else:  # the arrays are kept with the session: onnxruntime can make it again
                s.set_providers(CPU)
                same_outputs(s, plain, plain_path, f"{name}, over-2-GiB fallback after set_providers")
            with op.load(protected, key=key) as m:
                where = {t.location for t in m.external_tensors}
                assert where == set(m.external), (name, where, sorted(m.external))
        report["cases"][name] = got
    report["refused"] = check_refusals(cases[0][2], key, cases[0][2].parent)
    print(json.dumps(report))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
