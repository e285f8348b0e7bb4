"""onnx_protect.InferenceSession hands large decrypted weights to onnxruntime in place
(crates/session, docs/python.md#inferencesession), both ways: as external data files in
memory read in place (onnxruntime >= 1.31, "files") and, before that,
through add_initializer ("initializers", forced here with the fixture of that name):
outputs equal the plain model's session on every fixture and zoo model, a Transpose'd
external weight is right (the graph handed over names no ciphertext file), onnxruntime's
signature and habits hold, and options that would write the decrypted model to disk are
refused."""
import os
import pathlib
import select
import signal
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_protect as op

ROOT = pathlib.Path(__file__).resolve().parents[2]
CPU = ["CPUExecutionProvider"]
MODELS = sorted(ROOT.glob("fixtures/models/*/model.onnx")) + sorted(ROOT.glob("fixtures/digits/*.onnx")) \
    + sorted(ROOT.glob("fixtures/zoo/*/*.onnx"))


def inputs_for(session, model):
    """The stored inputs of a zoo model, else seeded random ones of the declared types."""
    names = [i.name for i in session.get_inputs()]
    for x in (model.with_name(model.stem + ".x.npy"), model.parent / "ref_x.npy", model.parent / "test_x.npy"):
        if x.exists() and len(names) == 1:
            return {names[0]: np.load(x)[:64]}
    rng = np.random.default_rng(0)
    kinds = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    out = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
        if i.type in kinds:
            out[i.name] = rng.standard_normal(shape).astype(kinds[i.type])
        else:
            ints = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
            out[i.name] = rng.integers(0, 2, shape).astype(ints[i.type])
    return out


@pytest.fixture
def initializers_way(monkeypatch):
    """The way taken where onnxruntime does not read external data files from memory in
    place (before 1.31): large MatMul/Gemm weights through add_initializer, the rest in
    the graph."""
    monkeypatch.setattr(op._session, "_ort_reads_files_in_place", lambda _ort: False)


def large_tensors_in(graph_bytes, subgraphs=False):
    """Names of the tensors of a graph handed to onnxruntime whose bytes are in it and
    are at least 1 KiB (initializers and Constant values of the main graph; with
    `subgraphs`, of every graph and function body)."""
    m = onnx.load_model_from_string(graph_bytes)
    out = []
    def walk(g, nodes):
        for t in getattr(g, "initializer", []):
            if len(t.raw_data) >= 1024 and not t.external_data:
                out.append(t.name)
        for n in nodes:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and len(a.t.raw_data) >= 1024 and not a.t.external_data:
                    out.append(a.t.name or n.name)
                for sub in list(a.graphs) + ([a.g] if a.type == onnx.AttributeProto.GRAPH else []):
                    if subgraphs:
                        walk(sub, sub.node)
    walk(m.graph, m.graph.node)
    for f in m.functions if subgraphs else []:
        walk(f, f.node)
    return out


def protect(model, tmp_path, key, **policy):
    out = tmp_path / model.parent.name / model.name
    out.parent.mkdir(parents=True, exist_ok=True)
    op.encrypt(model, out, key=key, **policy)
    return out


@pytest.mark.parametrize("way", ["files", "initializers"])
@pytest.mark.parametrize("model", MODELS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_fixture_and_zoo_model_gives_the_plain_session_s_outputs(model, way, tmp_path, request):
    if way == "initializers":
        request.getfixturevalue("initializers_way")
    key = op.new_key()
    enc = protect(model, tmp_path, key, coefficient=1, allow_empty=True)
    plain = ort.InferenceSession(str(model), providers=CPU)
    feeds = inputs_for(plain, model)
    want = plain.run(None, feeds)
    for in_place in (None, True):
        s = op.InferenceSession(enc, key=key, providers=CPU, in_place=in_place)
        got = s.run(None, feeds)
        assert [g.tobytes() for g in got] == [w.tobytes() for w in want], f"in_place={in_place}"
        if way == "files":
            assert s.onnx_protect_weights in ("files_in_place", "graph")
            assert large_tensors_in(s._model_bytes) == [], "every tensor of 1 KiB or more is in a file in memory"
        elif model.parent.name == "digits":
            # Every weight of these models is under 64 KiB: shared only when asked.
            shared = s._onnx_protect_buffers[0].shared
            assert bool(shared) == bool(in_place), "the digits models' MatMul/Gemm weights are used in place when asked"


def encrypted(plain, tmp_path, **kw):
    """`plain` protected with a new key into tmp_path/enc/model.onnx: (that path, the key)."""
    key = op.new_key()
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, key=key, **kw)
    return enc, key


def transposed_model(folder):
    """y = x · Transpose(W) · V, W and V float32 in an external file: onnxruntime folds
    Transpose(W) into a constant while it optimises the graph."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 32)).astype(np.float32)
    v = rng.standard_normal((48, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "Wt"], ["h"]),
         helper.make_node("MatMul", ["h", "V"], ["y"])],
        "transposed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(m, str(folder / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return folder / "model.onnx"


def test_files_a_transposed_external_weight_is_right_and_the_graph_names_only_files_in_memory(tmp_path, monkeypatch):
    plain = transposed_model(tmp_path / "plain")
    enc, key = encrypted(plain, tmp_path, coefficient=1)
    x = np.random.default_rng(2).standard_normal((1, 32)).astype(np.float32)
    want = ort.InferenceSession(str(plain), providers=CPU).run(None, {"x": x})[0]
    monkeypatch.chdir(enc.parent)
    s = op.InferenceSession(enc, key=key, providers=CPU)
    assert s.onnx_protect_weights == "files_in_place"
    assert s.run(None, {"x": x})[0].tobytes() == want.tobytes()
    graph = onnx.load_model_from_string(s._model_bytes)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    names = [n for n, _ in s._onnx_protect_buffers[0].files]
    assert locations == set(names) and all(n.startswith("onnx-protect.") for n in names), (locations, names)
    assert "weights.bin" not in locations


def test_a_transposed_external_weight_is_right_and_the_graph_names_no_ciphertext(tmp_path, monkeypatch, initializers_way):
    plain = transposed_model(tmp_path / "plain")
    enc, key = encrypted(plain, tmp_path, coefficient=1)
    assert enc.parent.joinpath("weights.bin").read_bytes() != plain.parent.joinpath("weights.bin").read_bytes()
    x = np.random.default_rng(2).standard_normal((1, 32)).astype(np.float32)
    want = ort.InferenceSession(str(plain), providers=CPU).run(None, {"x": x})[0]
    # The ciphertext file is where onnxruntime would resolve it for a model given as bytes.
    monkeypatch.chdir(enc.parent)
    s = op.InferenceSession(enc, key=key, providers=CPU, in_place=True)
    assert s.run(None, {"x": x})[0].tobytes() == want.tobytes()
    sm = s._onnx_protect_buffers[0]
    assert [name for name, *_ in sm.shared] == ["V"], "W feeds a Transpose (folded): not shared"
    graph = onnx.load_model_from_string(s._model_bytes)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"."}, "the graph handed over names no data file, only the sentinel for V"

    # What the check catches: the protected graph (naming the ciphertext file) with every
    # decrypted tensor added as an initializer folds Transpose(W) from ciphertext.
    m = op.load(enc, key=key)
    files = {loc: np.frombuffer(buf, dtype=np.uint8) for loc, buf in m.external.items()}
    so = ort.SessionOptions()
    keep = []
    for t in m.external_tensors:
        a = files[t.location][t.offset:t.offset + t.length].view(np.float32).reshape(tuple(t.dims))
        keep.append(ort.OrtValue.ortvalue_from_numpy(a))
        so.add_initializer(t.name, keep[-1])
    wrong = ort.InferenceSession(enc.read_bytes(), so, providers=CPU).run(None, {"x": x})[0]
    assert wrong.tobytes() != want.tobytes()


@pytest.mark.parametrize("way", ["files", "initializers"])
@pytest.mark.parametrize("name", ["model.enc.onnx", "m.onnx"], ids=["renamed", "renamed-same-length"])
def test_a_model_protected_into_its_own_folder_runs_once_the_plain_files_are_gone(name, way, tmp_path, monkeypatch,
                                                                                   request):
    """Protected next to the plain model, the side file is renamed ('<name>.data'); the
    decrypted model names 'weights.bin' again. Its external data comes from the decrypted
    files in memory, never from disk: neither the plain files' absence nor a stranger's
    'weights.bin' in their place changes anything. 'm.onnx.data' has the length of
    'weights.bin', so that decryption changes no length (a result patched in place)."""
    plain = transposed_model(tmp_path / "folder")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ("model.onnx", "weights.bin"):
        copy.joinpath(f).write_bytes(plain.parent.joinpath(f).read_bytes())
    key = op.new_key()
    enc = plain.parent / name
    op.encrypt(plain, enc, key=key, coefficient=1)
    assert sorted(p.name for p in enc.parent.iterdir()) == sorted(["model.onnx", "weights.bin", name, name + ".data"])
    x = np.random.default_rng(3).standard_normal((1, 32)).astype(np.float32)
    want = ort.InferenceSession(str(copy / "model.onnx"), providers=CPU).run(None, {"x": x})[0].tobytes()
    plain.unlink()
    plain.with_name("weights.bin").unlink()
    monkeypatch.chdir(enc.parent)
    if way == "initializers":
        request.getfixturevalue("initializers_way")
    for source in (enc, enc.read_bytes()):
        s = op.InferenceSession(source, key=key, providers=CPU, in_place=True)
        assert s.run(None, {"x": x})[0].tobytes() == want
        if way == "initializers":
            assert [n for n, *_ in s._onnx_protect_buffers[0].shared] == ["V"]
    enc.with_name("weights.bin").write_bytes(b"\0" * 7)
    assert op.InferenceSession(enc, key=key, providers=CPU).run(None, {"x": x})[0].tobytes() == want


def test_a_graph_naming_the_sentinel_makes_onnxruntime_fail_not_guess(tmp_path):
    """The property the design rests on: an optimiser that reads a tensor whose data is
    at '.' gets an error, so a wrong prediction cannot give wrong outputs."""
    model = onnx.load(str(transposed_model(tmp_path / "m")), load_external_data=False)
    w = numpy_helper.to_array(onnx.load(str(tmp_path / "m" / "model.onnx")).graph.initializer[0])
    for e in model.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "."
    so = ort.SessionOptions()
    v = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(w))
    so.add_initializer("W", v)
    for t in model.graph.initializer[1:]:
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
        t.raw_data = np.zeros(tuple(t.dims), np.float32).tobytes()
    with pytest.raises(Exception, match="regular file|out of bounds|model_path|read"):
        ort.InferenceSession(model.SerializeToString(), so, providers=CPU)


def test_a_refused_shared_graph_is_built_again_with_every_tensor(tmp_path, monkeypatch, initializers_way):
    key = op.new_key()
    model = ROOT / "fixtures" / "digits" / "mlp.onnx"
    enc = protect(model, tmp_path, key)
    real = op._session._session_class(ort)
    calls = []

    class RefusesSentinel(real):
        def __init__(self, graph, *a, **kw):
            calls.append(graph)
            if len(calls) == 1:
                raise RuntimeError("simulated: Random-access reads require a regular file: .")
            super().__init__(graph, *a, **kw)

    monkeypatch.setattr(op._session, "_session_class", lambda _ort: RefusesSentinel)
    s = op.InferenceSession(enc, key=key, providers=CPU, in_place=True)
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:32]
    want = ort.InferenceSession(str(model), providers=CPU).run(None, {"input": x})[0]
    assert s.run(None, {"input": x})[0].tobytes() == want.tobytes()
    assert len(calls) == 2 and len(calls[1]) > len(calls[0]), "the second graph holds every tensor"


@pytest.mark.parametrize("way", ["files", "initializers"])
def test_onnxruntime_s_signature_bytes_positional_options_and_reuse(way, tmp_path, request):
    if way == "initializers":
        request.getfixturevalue("initializers_way")
    key = op.new_key()
    src = ROOT / "fixtures" / "models" / "external_data"
    enc = protect(src / "model.onnx", tmp_path, key)
    plain = ort.InferenceSession(str(src / "model.onnx"), providers=CPU)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = plain.run(None, {"x": x})[0].tobytes()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    a = op.InferenceSession(enc, so, CPU, key=key, in_place=True)  # positional sess_options and providers
    b = op.InferenceSession(enc, so, CPU, key=key, in_place=True)  # the same options again
    assert a.run(None, {"x": x})[0].tobytes() == want and b.run(None, {"x": x})[0].tobytes() == want
    assert a.get_session_options().intra_op_num_threads == 1
    # The protected model as bytes (external data found in the current directory).
    cwd = os.getcwd()
    os.chdir(enc.parent)
    try:
        c = op.InferenceSession(enc.read_bytes(), key=key, providers=CPU)
    finally:
        os.chdir(cwd)
    assert c.run(None, {"x": x})[0].tobytes() == want
    # Options that supply another model's initializer under a name this model uses.
    other = tmp_path / "other.onnx"
    op.encrypt(transposed_model(tmp_path / "t"), other, key=key)
    so2 = ort.SessionOptions()
    op.InferenceSession(other, so2, CPU, key=key, in_place=True)
    clash = tmp_path / "clash"
    plain_clash = transposed_model(clash)
    m = onnx.load(str(plain_clash))
    m.graph.initializer[1].raw_data = (numpy_helper.to_array(m.graph.initializer[1]) + 1).tobytes()
    onnx.save_model(m, str(clash / "model2.onnx"), save_as_external_data=True, location="w2.bin", size_threshold=0)
    op.encrypt(clash / "model2.onnx", tmp_path / "clash.onnx", key=key)
    if way == "files":
        # Each session's files have names of their own: the options serve both models.
        x2 = np.random.default_rng(5).standard_normal((1, 32)).astype(np.float32)
        for in_place in (None, True):
            s = op.InferenceSession(tmp_path / "clash.onnx", so2, CPU, key=key, in_place=in_place)
            want2 = ort.InferenceSession(str(clash / "model2.onnx"), providers=CPU).run(None, {"x": x2})[0]
            assert s.run(None, {"x": x2})[0].tobytes() == want2.tobytes()
        return
    for in_place in (None, True):  # the clashing tensor shared, or in the graph
        with pytest.raises(op.OnnxProtectError, match="new onnxruntime.SessionOptions"):
            op.InferenceSession(tmp_path / "clash.onnx", so2, CPU, key=key, in_place=in_place)


def test_in_place_false_and_other_providers_copy(tmp_path):
    key = op.new_key()
    model = ROOT / "fixtures" / "digits" / "vit.onnx"
    enc = protect(model, tmp_path, key)
    s = op.InferenceSession(enc, key=key, providers=CPU, in_place=False)
    assert not s._onnx_protect_buffers[0].shared
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:16]
    want = ort.InferenceSession(str(model), providers=CPU).run(None, {"input": x})[0]
    assert s.run(None, {"input": x})[0].tobytes() == want.tobytes()


@pytest.mark.parametrize("settings", [
    [("optimized_model_filepath", "opt.onnx")],
    [("optimized_model_filepath", "opt.onnx"), ("session.optimized_model_external_initializers_file_name", "w.bin")],
], ids=lambda s: "+".join(n for n, _ in s))
def test_options_that_write_the_decrypted_model_are_refused(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = op.new_key()
    enc = protect(ROOT / "fixtures" / "digits" / "mlp.onnx", tmp_path, key)
    so = ort.SessionOptions()
    for name, value in settings:
        if name == "optimized_model_filepath":
            so.optimized_model_filepath = str(tmp_path / value)
        else:
            so.add_session_config_entry(name, value)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(op.UnsafeSessionOptions) as e:
        op.InferenceSession(enc, so, CPU, key=key)
    for name, value in settings:
        assert name in str(e.value), (name, str(e.value))
        assert value == "1" or value in str(e.value), (value, str(e.value))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing written"
    with pytest.raises(op.UnsafeSessionOptions, match="trt_engine_cache_enable"):
        op.InferenceSession(enc, providers=[("TensorrtExecutionProvider", {"trt_engine_cache_enable": True})], key=key)


@pytest.mark.parametrize("settings", [
    [("ep.context_enable", "1")],
    [("ep.context_enable", "1"), ("ep.context_file_path", "ctx.onnx")],
], ids=lambda s: "+".join(n for n, _ in s))
def test_ep_context_models_are_switched_off(settings, tmp_path, monkeypatch):
    """ep.context_enable is set to "0" on the options given (onnxruntime warns that it
    overwrote "1"): the session onnxruntime builds has it off, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    key = op.new_key()
    model = ROOT / "fixtures" / "digits" / "mlp.onnx"
    enc = protect(model, tmp_path, key)
    so = ort.SessionOptions()
    for name, value in settings:
        so.add_session_config_entry(name, value)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    s = op.InferenceSession(enc, so, CPU, key=key)
    assert so.get_session_config_entry("ep.context_enable") == "0"
    assert s.get_session_options().get_session_config_entry("ep.context_enable") == "0"
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:4]
    want = ort.InferenceSession(str(model), providers=CPU).run(None, {"input": x})[0]
    assert s.run(None, {"input": x})[0].tobytes() == want.tobytes()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing written"


@pytest.mark.parametrize("name, value", [
    ("session.optimized_model_external_initializers_file_name", "w.bin"),
    ("ep.context_file_path", "ctx.onnx"),
    ("ep.context_enable", "0"),
])
def test_file_names_without_the_option_that_writes_them_are_harmless(name, value, tmp_path, monkeypatch):
    """Names given to files that only optimized_model_filepath or ep.context_enable write
    make onnxruntime write nothing on their own: the session is made, and no file appears."""
    monkeypatch.chdir(tmp_path)
    key = op.new_key()
    enc = protect(ROOT / "fixtures" / "digits" / "mlp.onnx", tmp_path, key)
    so = ort.SessionOptions()
    so.add_session_config_entry(name, value)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    s = op.InferenceSession(enc, so, CPU, key=key)
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:4]
    s.run(None, {"input": x})
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing written"


def test_profiling_is_allowed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = op.new_key()
    enc = protect(ROOT / "fixtures" / "digits" / "mlp.onnx", tmp_path, key)
    so = ort.SessionOptions()
    so.enable_profiling = True
    s = op.InferenceSession(enc, so, CPU, key=key)
    s.run(None, {"input": np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:1]})
    profile = pathlib.Path(s.end_profiling())
    assert profile.exists() and b"model_run" in profile.read_bytes()


def chain_model(folder, count, dim, seed=0):
    """y = x · W0 · … · W{count-1}, every weight dim² float32 in one external file."""
    rng = np.random.default_rng(seed)
    names = [f"W{i}" for i in range(count)]
    inits = [numpy_helper.from_array((rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32), n) for n in names]
    values = ["x"] + [f"h{i}" for i in range(1, count)] + ["y"]
    nodes = [helper.make_node("MatMul", [values[i], n], [values[i + 1]]) for i, n in enumerate(names)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, dim])], inits)
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
                    save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return path


def test_external_weights_filled_on_demand_beyond_the_budget_give_the_plain_outputs_also_in_a_forked_child(tmp_path):
    """12 weights of 4 MiB: more than the chunks kept while the session is built (the
    largest tensor and slack), so onnxruntime's prepacking reads chunks that are dropped
    and filled again. The session's outputs are the plain session's, before and after a
    fork, and in the forked child, whose copy of the weights was filled before the fork."""
    plain = chain_model(tmp_path / "plain", 12, 1024)
    enc, key = encrypted(plain, tmp_path)
    x = np.random.default_rng(3).standard_normal((2, 1024)).astype(np.float32)
    def options():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1  # no thread pool: a forked child has none of the parent's threads
        so.inter_op_num_threads = 1
        return so

    want = ort.InferenceSession(str(plain), options(), CPU).run(None, {"x": x})[0].tobytes()
    s = op.InferenceSession(enc, options(), CPU, key=key)
    sm = s._onnx_protect_buffers[0]
    if not hasattr(os, "fork") or sm.external_method != "on_demand":
        pytest.skip(f"external data not filled on demand here ({sm.external_method}: no userfaultfd)")
    assert s.run(None, {"x": x})[0].tobytes() == want
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the session, send the output back, leave at once
        try:
            os.write(w, s.run(None, {"x": x})[0].tobytes())
        finally:
            os._exit(0)
    os.close(w)
    got, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([r], [], [], 1)[0]:
            continue
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        got += chunk
    os.close(r)
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not finish within 120 s")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert got == want, "the forked child's outputs"
    assert s.run(None, {"x": x})[0].tobytes() == want


def test_a_key_below_the_top_tier_fills_external_data_on_demand_as_the_top_key_does(tmp_path):
    """A chain whose last `MatMul` is `[features, 256]` tiered by class (`tiers=3` alone): a
    session with a tier's key takes the on-demand path as the top key's does (the manifest a
    file would keep is not handed to onnxruntime), serves that tier's classes exactly and the
    others not; the top key gives the plain outputs."""
    plain = chain_model(tmp_path / "plain", 3, 256, seed=2)
    key = tmp_path / "k.key"
    op.keygen(key, tiers=3)
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, key_file=key, tiers=3)
    x = np.random.default_rng(5).standard_normal((2, 256)).astype(np.float32)
    want = ort.InferenceSession(str(plain), providers=CPU).run(None, {"x": x})[0]
    methods = set()
    for tier, served in [(1, 86), (2, 171)]:  # round(1 + k * 255 / 3)
        s = op.InferenceSession(enc, key_file=f"{key}.tier{tier}", providers=CPU)
        methods.add(s._onnx_protect_buffers[0].external_method)
        got = s.run(None, {"x": x})[0]
        assert np.array_equal(got[:, :served], want[:, :served]), tier
        assert (got[:, served:] != want[:, served:]).all(), tier
    top = op.InferenceSession(enc, key_file=key, providers=CPU)
    methods.add(top._onnx_protect_buffers[0].external_method)
    assert top.run(None, {"x": x})[0].tobytes() == want.tobytes()
    assert len(methods) == 1, methods  # every key the same way: on demand where the system can


def test_on_demand_false_decrypts_external_data_whole_with_the_same_outputs(tmp_path):
    plain = chain_model(tmp_path / "plain", 3, 256, seed=1)
    enc, key = encrypted(plain, tmp_path)
    x = np.random.default_rng(4).standard_normal((2, 256)).astype(np.float32)
    want = ort.InferenceSession(str(plain), providers=CPU).run(None, {"x": x})[0].tobytes()
    whole = op.InferenceSession(enc, key=key, providers=CPU, on_demand=False)
    assert whole._onnx_protect_buffers[0].external_method == "memory"
    assert whole.run(None, {"x": x})[0].tobytes() == want
    lazy = op.InferenceSession(enc, key=key, providers=CPU)
    assert lazy._onnx_protect_buffers[0].external_method in ("on_demand", "memory")
    assert lazy.run(None, {"x": x})[0].tobytes() == want


@pytest.mark.parametrize("verify_on_read", [False, True])
def test_with_prepacking_off_external_data_beyond_the_budget_is_filled_as_it_is_read_with_the_plain_outputs(
    verify_on_read, tmp_path
):
    """With prepacking off onnxruntime reads most weights only in its first run, after the
    region settled (27 MiB of weights here, more than the budget while the session is
    built): every run gives the plain file's outputs with the same options, also with the
    chunks verified when first read."""
    plain = chain_model(tmp_path / "plain", 3, 1536, seed=5)
    enc, key = encrypted(plain, tmp_path)
    x = np.random.default_rng(6).standard_normal((2, 1536)).astype(np.float32)

    def options():
        so = ort.SessionOptions()
        so.add_session_config_entry("session.disable_prepacking", "1")
        return so

    want = ort.InferenceSession(str(plain), options(), providers=CPU).run(None, {"x": x})[0].tobytes()
    s = op.InferenceSession(enc, options(), CPU, key=key, verify_on_read=verify_on_read)
    assert s._onnx_protect_buffers[0].external_method in ("on_demand", "memory")
    assert s.run(None, {"x": x})[0].tobytes() == want
    assert s.run(None, {"x": x})[0].tobytes() == want


def test_prepacking_off_in_the_session_options_makes_the_region_one_for_a_reader_of_few_weights():
    """``session.disable_prepacking`` = ``"1"`` on the options: the loader asks for a region
    for a runtime that reads few weights (``InMemory::reads_few``; the region's behaviour is
    tested in crates/fsio and crates/core); any other value or none: the default region."""
    from onnx_protect._session import _reads_few

    so = ort.SessionOptions()
    assert not _reads_few(so)
    so.add_session_config_entry("session.disable_prepacking", "0")
    assert not _reads_few(so)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_prepacking", "1")
    assert _reads_few(so)


@pytest.mark.parametrize("how", ["on demand", "whole", "no prepacking", "verified on read"])
def test_a_changed_external_byte_gives_no_session_but_a_modified_error(how, tmp_path):
    """The header lists every external chunk's hash: filled on demand, a changed chunk is
    read as zeros while the session is built and the load then fails as modified (the
    session is thrown away), also when chunks are verified on read (prepacking reads every
    weight while the session is built); with prepacking off the chunk is not read while the
    session is built and the check when the session is settled finds it; decrypted whole,
    the load fails before the session. No session is returned either way."""
    plain = chain_model(tmp_path / "plain", 3, 1024, seed=2)
    enc, key = encrypted(plain, tmp_path)
    side = enc.parent / "w.bin"
    data = bytearray(side.read_bytes())
    data[len(data) // 2] ^= 0x04
    side.write_bytes(bytes(data))
    so = ort.SessionOptions()
    if how == "no prepacking":
        so.add_session_config_entry("session.disable_prepacking", "1")
    with pytest.raises(op.OnnxProtectError) as e:
        op.InferenceSession(enc, so, CPU, key=key, on_demand=(how != "whole"), verify_on_read=(how == "verified on read"))
    assert e.value.kind == "modified", e.value
    assert str(enc) in str(e.value)


def scaled_chain_model(folder):
    """y = ((x · W0) ⊙ s0 + b0) · W1 ⊙ s1 + b1: 1024² float32 weights and 1024-element scales
    and biases (4 KiB, as a quantised model's per-channel scales) between them in one external
    file: (model path, {name: (offset, length)} in it)."""
    rng = np.random.default_rng(5)
    inits, nodes, prev = [], [], "x"
    for i in range(2):
        w = (rng.standard_normal((1024, 1024)) / 32).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, 1024).astype(np.float32), f"s{i}"),
                  numpy_helper.from_array(rng.standard_normal(1024).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]), helper.make_node("Mul", [f"m{i}", f"s{i}"], [f"p{i}"]),
                  helper.make_node("Add", [f"p{i}", f"b{i}"], [f"h{i}" if i == 0 else "y"])]
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1024])], inits)
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
                    save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    where = {}
    for t in onnx.load(str(path), load_external_data=False).graph.initializer:
        e = {x.key: x.value for x in t.external_data}
        where[t.name] = (int(e.get("offset", 0)), int(e["length"]))
    return path, where


@pytest.mark.parametrize("how", ["on demand", "whole", "no prepacking", "verified on read"])
def test_small_external_tensors_between_the_weights_are_right_and_a_change_in_one_gives_no_session(how, tmp_path):
    """Scales and biases of 4 KiB between the weights of one external file (as a quantised
    model's per-channel scales, which onnxruntime reads in a pass before the weights): the
    outputs are the plain model's, and a byte changed inside a scale gives no session but a
    modified error, however the file is read."""
    plain, where = scaled_chain_model(tmp_path / "plain")
    enc, key = encrypted(plain, tmp_path)
    x = np.random.default_rng(6).standard_normal((2, 1024)).astype(np.float32)

    def options():
        so = ort.SessionOptions()
        if how == "no prepacking":
            so.add_session_config_entry("session.disable_prepacking", "1")
        return so

    kw = dict(key=key, on_demand=(how != "whole"), verify_on_read=(how == "verified on read"))
    want = ort.InferenceSession(plain, options(), providers=CPU).run(None, {"x": x})[0]
    got = op.InferenceSession(enc, options(), CPU, **kw).run(None, {"x": x})[0]
    assert np.array_equal(got, want)
    side = enc.parent / "w.bin"
    data = bytearray(side.read_bytes())
    offset, length = where["s1"]
    data[offset + length // 2] ^= 0x04
    side.write_bytes(bytes(data))
    with pytest.raises(op.OnnxProtectError) as e:
        op.InferenceSession(enc, options(), CPU, **kw)
    assert e.value.kind == "modified", e.value


# Run by the next test in a child process: a session verified on read, with prepacking
# off, of a model whose changed chunk nothing read while the session was built.
VERIFIED_ON_READ_CHILD = """
import sys
import numpy as np, onnxruntime as ort, onnx_protect as op
so = ort.SessionOptions()
so.add_session_config_entry("session.disable_prepacking", "1")
s = op.InferenceSession(sys.argv[1], so, ["CPUExecutionProvider"], key_file=sys.argv[2], verify_on_read=True)
print("opened", s._onnx_protect_buffers[0].external_method, flush=True)
y = s.run(None, {"x": np.ones((2, 1024), np.float32)})[0]
print("ran", float(y.sum()), flush=True)
"""


def test_verified_on_read_a_changed_chunk_first_read_in_a_run_ends_the_process_with_one_line(tmp_path):
    """With prepacking off onnxruntime reads the weights in its first run: the changed
    chunk (in the last of 12 weights of 4 MiB, past the blocks the handler fills before the
    session is returned) is found there, and the process ends (abort) after one line naming
    the file and the bytes, before any output is computed from it."""
    import subprocess
    import sys

    plain = chain_model(tmp_path / "plain", 12, 1024, seed=2)
    enc, key = encrypted(plain, tmp_path)
    key_file = tmp_path / "k.key"
    key_file.write_bytes(key)
    side = enc.parent / "w.bin"
    data = bytearray(side.read_bytes())
    data[-100] ^= 0x04
    side.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-c", VERIFIED_ON_READ_CHILD, str(enc), str(key_file)],
                       capture_output=True, text=True, timeout=300)
    if "opened memory" in r.stdout or "opened None" in r.stdout:
        pytest.skip("external data not filled on demand here (no userfaultfd)")
    assert "opened on_demand" in r.stdout, (r.stdout, r.stderr)
    assert "ran" not in r.stdout, "outputs were computed from a changed chunk"
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.startswith("onnx-protect:")]
    assert len(lines) == 1 and "w.bin" in lines[0] and "does not match its hash" in lines[0], r.stderr


def single_file_chain(folder, count, dim, seed=0):
    """`chain_model` with every weight in the model file itself."""
    path = chain_model(folder, count, dim, seed)
    model = onnx.load(path)
    (folder / "w.bin").unlink()
    path.unlink()
    onnx.save_model(model, path)
    return path


@pytest.mark.parametrize("how", ["default", "no prepacking", "whole"])
def test_a_single_file_model_of_16_mib_or_more_has_its_weights_filled_on_demand_with_the_plain_outputs(how, tmp_path):
    """Six weights of 4 MiB in the model file: onnxruntime reads them from memory filled on
    demand (the graph handed over is built from the rest of the file); outputs equal the
    plain session's, with prepacking on or off, and decrypted whole (`on_demand=False`)."""
    plain = single_file_chain(tmp_path / "plain", 6, 1024, seed=5)
    enc, key = encrypted(plain, tmp_path)
    x = np.random.default_rng(6).standard_normal((2, 1024)).astype(np.float32)
    so = ort.SessionOptions()
    if how == "no prepacking":
        so.add_session_config_entry("session.disable_prepacking", "1")
    want = ort.InferenceSession(str(plain), so, CPU).run(None, {"x": x})[0].tobytes()
    s = op.InferenceSession(enc, so, CPU, key=key, on_demand=(how != "whole"))
    if s.onnx_protect_weights != "files_in_place":
        pytest.skip("onnxruntime < 1.31 takes no external data files from memory in place")
    sf = s._onnx_protect_buffers[0]
    if how == "whole":
        assert sf.model_method == "memory"
    elif sf.model_method != "on_demand":
        pytest.skip(f"the model file is not filled on demand here ({sf.model_method}: no userfaultfd)")
    assert s.run(None, {"x": x})[0].tobytes() == want


def test_a_changed_byte_of_a_single_file_model_filled_on_demand_gives_no_session(tmp_path):
    """The model file's chunks are hashed before anything is handed over: a byte changed
    inside a weight is refused as modified, and no session is returned."""
    plain = single_file_chain(tmp_path / "plain", 6, 1024, seed=7)
    enc, key = encrypted(plain, tmp_path)
    data = bytearray(enc.read_bytes())
    data[len(data) // 2] ^= 0x04
    enc.write_bytes(bytes(data))
    with pytest.raises(op.OnnxProtectError) as e:
        op.InferenceSession(enc, providers=CPU, key=key)
    assert e.value.kind == "modified", e.value


def nested_model(folder, storage):
    """A main-graph chain of `x · W_i` (4 MiB each, 16 MiB in all), then an `If` whose
    branches multiply by weights of their own, a `Loop` whose body does, and a model-local
    function with a `Constant` weight: every weight stored as `storage` says (in the model
    file, or all in one external file)."""
    rng = np.random.default_rng(11)
    w = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
    vi = lambda name, shape=None: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
    branch = lambda name: helper.make_graph([helper.make_node("MatMul", ["h", name], [name + "_y"])], name, [],
                                            [vi(name + "_y")], [numpy_helper.from_array(w(1024, 64), name)])
    body = helper.make_graph(
        [helper.make_node("MatMul", ["acc", "L"], ["acc_out"]), helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []), vi("acc", [1, 64])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), vi("acc_out", [1, 64])],
        [numpy_helper.from_array(w(64, 64), "L")])
    fn = helper.make_function("local", "Head", ["a"], ["b"], [
        helper.make_node("Constant", [], ["F"], value=numpy_helper.from_array(w(64, 16), "F")),
        helper.make_node("MatMul", ["a", "F"], ["b"])], [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"W{i}"], [f"h{i + 1}"]) for i in range(4)]
    nodes += [helper.make_node("Identity", ["h4"], ["h"]),
              helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
              helper.make_node("If", ["c"], ["b"], then_branch=branch("T"), else_branch=branch("E")),
              helper.make_node("Loop", ["n", "true", "b"], ["l"], body=body),
              helper.make_node("Head", ["l"], ["y"], domain="local")]
    inits = [numpy_helper.from_array(w(1024, 1024), f"W{i}") for i in range(4)] + [
        numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(np.array(2, np.int64), "n"),
        numpy_helper.from_array(np.array(True), "true")]
    graph = helper.make_graph(nodes, "nested", [vi("x", [1, 1024])], [vi("y")], inits)
    m = helper.make_model(graph, functions=[fn],
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    if storage == "external":
        onnx.save_model(m, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0,
                        convert_attribute=True)
    else:
        onnx.save_model(m, str(path))
    return path


@pytest.mark.parametrize("storage", ["single file", "external"])
def test_weights_of_subgraphs_and_functions_stay_in_the_graph_with_the_plain_outputs(storage, tmp_path):
    """onnxruntime looks for the external data of an `If` branch's, a `Loop` body's or a
    function's tensor on disk, never among the files it was given in memory: those tensors
    stay in the graph handed over (decrypted), the main graph's large weights go to files
    in memory (here filled on demand: 16 MiB in the model file, or external), and the
    outputs are the plain model's on both branches of the `If`."""
    plain = nested_model(tmp_path / "plain", storage)
    enc, key = encrypted(plain, tmp_path)
    want_session = ort.InferenceSession(str(plain), providers=CPU)
    s = op.InferenceSession(enc, providers=CPU, key=key)
    for sign in (1, -1):
        x = {"x": sign * np.abs(np.random.default_rng(12).standard_normal((1, 1024))).astype(np.float32)}
        assert s.run(None, x)[0].tobytes() == want_session.run(None, x)[0].tobytes()
    if s.onnx_protect_weights == "files_in_place":
        assert large_tensors_in(s._model_bytes) == []
        assert sorted(large_tensors_in(s._model_bytes, subgraphs=True)) == ["E", "F", "L", "T"]


def test_a_protected_model_in_a_model_cache_snapshot_linked_to_blobs_is_verified_decrypted_and_run(tmp_path):
    """The layout of a Hugging Face Hub cache: the snapshot's files are symbolic links to
    blobs kept outside it, named by their hash. onnxruntime follows them, and so does
    every reader here (docs/format.md §5): verify, decrypt and the session."""
    plain = chain_model(tmp_path / "plain", 3, 256, seed=9)
    enc, key = encrypted(plain, tmp_path)
    snapshot, blobs = tmp_path / "hub" / "snapshots" / "0123abc", tmp_path / "hub" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(enc.parent.iterdir())):
        blob = blobs / f"{i:040x}"
        f.rename(blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    model = snapshot / enc.name
    op.verify(model, key=key)
    out = tmp_path / "back" / "model.onnx"
    out.parent.mkdir()
    op.decrypt(model, out, key=key)
    for f in plain.parent.iterdir():
        assert (out.parent / f.name).read_bytes() == f.read_bytes(), f.name
    x = np.random.default_rng(10).standard_normal((2, 256)).astype(np.float32)
    want = ort.InferenceSession(str(plain), providers=CPU).run(None, {"x": x})[0]
    assert op.InferenceSession(model, providers=CPU, key=key).run(None, {"x": x})[0].tobytes() == want.tobytes()
