"""The operators of ``onnx_protect._torch_ops`` and ``_torch_rnn`` (the training attacks'
interpreter beyond its core set; the recurrent ones in every direction and layout) against
onnxruntime: each in a small graph on random inputs through
``_torch_graph.check`` (the comparison ``assess`` runs before any attack), values within
1e-4 of the largest output and non-finite values at the same places; boolean and integer
results are turned into floats by the graph so that they are compared too. Attributes each
case does not cover are refused by name, and gradients reach a constant through the new
operators (the attacks train them)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the interpreter is PyTorch (tests/requirements-torch.txt)")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnx_protect import _torch_graph as tg  # noqa: E402

F32 = TensorProto.FLOAT
RNG = np.random.default_rng(5)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, inits=(), shape=(2, 3, 4, 5), opset=18):
    x = helper.make_tensor_value_info("x", F32, list(shape))
    y = helper.make_tensor_value_info("y", F32, None)
    g = helper.make_graph(nodes, "op", [x], [y], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def n(op, ins, outs, **kw):
    return helper.make_node(op, ins, outs, **kw)


def cast(src, dst="y"):
    return n("Cast", [src], [dst], to=F32)


def where(cond, dst="y"):
    """y = cond ? x : 0."""
    return n("Where", [cond, "x", "zero"], [dst])


ZERO = init("zero", np.float32(0))
W56 = init("w56", RNG.standard_normal((5, 6)).astype(np.float32))
C1 = init("c1", RNG.standard_normal((4, 5)).astype(np.float32))
C2 = init("c2", RNG.standard_normal((5,)).astype(np.float32))

CASES = {
    "IsNaN": ([n("Log", ["x"], ["l"]), n("IsNaN", ["l"], ["b"]), where("b")], [ZERO]),
    "IsInf": ([n("Div", ["x", "z"], ["d"]), n("IsInf", ["d"], ["b"], detect_negative=0), cast("b")],
              [init("z", np.where(RNG.random((5,)) < 0.5, 0.0, 1.0).astype(np.float32))]),
    "Sign": ([n("Sign", ["x"], ["y"])], []),
    "Round": ([n("Mul", ["x", "k"], ["m"]), n("Round", ["m"], ["y"])], [init("k", np.float32(4.0))]),
    "Tan": ([n("Tan", ["x"], ["y"])], []),
    "Asin": ([n("Tanh", ["x"], ["t"]), n("Asin", ["t"], ["y"])], []),
    "Acos": ([n("Tanh", ["x"], ["t"]), n("Acos", ["t"], ["y"])], []),
    "Atan": ([n("Atan", ["x"], ["y"])], []),
    "Sinh": ([n("Sinh", ["x"], ["y"])], []),
    "Cosh": ([n("Cosh", ["x"], ["y"])], []),
    "Selu": ([n("Selu", ["x"], ["y"], alpha=1.5, gamma=0.9)], []),
    "Celu": ([n("Celu", ["x"], ["y"], alpha=0.7)], []),
    "ThresholdedRelu": ([n("ThresholdedRelu", ["x"], ["y"], alpha=0.3)], []),
    "PRelu": ([n("PRelu", ["x", "s"], ["y"])], [init("s", RNG.random((3, 1, 1)).astype(np.float32))]),
    "LRN": ([n("LRN", ["x"], ["y"], size=3, alpha=0.01, beta=0.6, bias=2.0)], []),  # onnxruntime: odd sizes
    "Flatten at the rank": ([n("Flatten", ["x"], ["y"], axis=4)], []),
    "Flatten from the end": ([n("Flatten", ["x"], ["y"], axis=-1)], []),
    "And": ([n("Greater", ["x", "zero"], ["p"]), n("Less", ["x", "h"], ["q"]), n("And", ["p", "q"], ["b"]),
             where("b")], [ZERO, init("h", np.float32(0.5))]),
    "Or": ([n("Greater", ["x", "h"], ["p"]), n("Less", ["x", "zero"], ["q"]), n("Or", ["p", "q"], ["b"]),
            where("b")], [ZERO, init("h", np.float32(0.5))]),
    "Xor": ([n("Greater", ["x", "zero"], ["p"]), n("Greater", ["x", "h"], ["q"]), n("Xor", ["p", "q"], ["b"]),
             where("b")], [ZERO, init("h", np.float32(0.5))]),
    "LessOrEqual": ([n("LessOrEqual", ["x", "c2"], ["b"]), where("b")], [ZERO, C2]),
    "GreaterOrEqual": ([n("GreaterOrEqual", ["x", "c2"], ["b"]), where("b")], [ZERO, C2]),
    "Mod": ([n("Mod", ["x", "m"], ["y"], fmod=1)], [init("m", np.float32(0.7))]),
    "Sum": ([n("Sum", ["x", "c1", "c2"], ["y"])], [C1, C2]),
    "Mean": ([n("Mean", ["x", "c1", "c2"], ["y"])], [C1, C2]),
    "Max": ([n("Max", ["x", "c1", "c2"], ["y"])], [C1, C2]),
    "Min": ([n("Min", ["x", "c1", "c2"], ["y"])], [C1, C2]),
    "CastLike": ([n("Cast", ["x"], ["i"], to=TensorProto.INT32), n("CastLike", ["i", "x"], ["y"])], []),
    "Size": ([n("Size", ["x"], ["s"]), cast("s", "f"), n("Mul", ["x", "f"], ["y"])], []),
    "Einsum": ([n("Einsum", ["x", "w56"], ["y"], equation="bcij,jk->bcik")], [W56]),
    "CumSum": ([n("CumSum", ["x", "ax"], ["y"])], [init("ax", np.int64(2))]),
    "CumSum exclusive reverse": ([n("CumSum", ["x", "ax"], ["y"], exclusive=1, reverse=1)],
                                 [init("ax", np.int64(-1))]),
    "Trilu": ([n("Trilu", ["x", "k"], ["y"], upper=0)], [init("k", np.int64(1))]),
    "Trilu upper": ([n("Trilu", ["x"], ["y"])], []),
    "Pad": ([n("Pad", ["x", "p", "v"], ["y"])],
            [init("p", np.array([0, 1, 2, -1, 1, 0, 1, 2], np.int64)), init("v", np.float32(0.25))]),
    "Pad reflect": ([n("Pad", ["x", "p"], ["y"], mode="reflect")],
                    [init("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))]),
    "Pad edge, axes": ([n("Pad", ["x", "p", "", "a"], ["y"], mode="edge")],
                       [init("p", np.array([2, 1, 0, 3], np.int64)), init("a", np.array([2, 3], np.int64))]),
    "Pad wrap": ([n("Pad", ["x", "p"], ["y"], mode="wrap")],
                 [init("p", np.array([0, 0, 0, 1, 0, 0, 0, 2], np.int64))]),
    "Pad opset 10": ([n("Pad", ["x"], ["y"], pads=[0, 0, 1, 1, 0, 0, 2, 0], value=1.5)], []),
    "ConvTranspose": ([n("ConvTranspose", ["x", "wt", "bt"], ["y"], strides=[2, 2], pads=[1, 0, 1, 1],
                         output_padding=[1, 1])],
                      [init("wt", RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)),
                       init("bt", RNG.standard_normal((2,)).astype(np.float32))]),
    "ConvTranspose grouped, dilated": ([n("ConvTranspose", ["x", "wg"], ["y"], group=3, dilations=[2, 1])],
                                       [init("wg", RNG.standard_normal((3, 1, 2, 2)).astype(np.float32))]),
    "Resize nearest": ([n("Resize", ["x", "", "s"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
                          nearest_mode="floor")], [init("s", np.array([1, 1, 2, 3], np.float32))]),
    "Resize linear": ([n("Resize", ["x", "", "", "z"], ["y"], mode="linear")],
                      [init("z", np.array([2, 3, 7, 9], np.int64))]),
    "Resize linear, align corners": ([n("Resize", ["x", "", "s"], ["y"], mode="linear",
                                        coordinate_transformation_mode="align_corners")],
                                     [init("s", np.array([1, 1, 2, 2], np.float32))]),
    "Resize cubic": ([n("Resize", ["x", "", "s"], ["y"], mode="cubic")],
                     [init("s", np.array([1, 1, 2, 1.5], np.float32))]),
    "ArgMax": ([n("ArgMax", ["x"], ["i"], axis=2, select_last_index=1), cast("i")], []),
    "ArgMin": ([n("ArgMin", ["x"], ["i"], axis=-1, keepdims=0), cast("i")], []),
    "TopK": ([n("TopK", ["x", "k"], ["v", "i"], axis=-1), cast("i", "f"), n("Add", ["v", "f"], ["y"])],
             [init("k", np.array([3], np.int64))]),
    "ScatterND": ([n("ScatterND", ["x", "si", "su"], ["y"])],
                  [init("si", np.array([[0, 1], [1, 2]], np.int64)),
                   init("su", RNG.standard_normal((2, 4, 5)).astype(np.float32))]),
    "GatherND": ([n("GatherND", ["x", "gi"], ["y"])], [init("gi", np.array([[0, 1], [1, -1]], np.int64))]),
    "GatherND batch_dims": ([n("GatherND", ["x", "gb"], ["y"], batch_dims=1)],
                            [init("gb", np.array([[[2], [0]], [[-1], [1]]], np.int64))]),
    "ScatterElements": ([n("ScatterElements", ["x", "ei", "eu"], ["y"], axis=1)],
                        [init("ei", np.array([[[[2, 0, 1, 2, 0]]], [[[1, -1, 0, 0, 2]]]], np.int64)),
                         init("eu", RNG.standard_normal((2, 1, 1, 5)).astype(np.float32))]),
    "NonZero": ([n("Greater", ["x", "zero"], ["b"]), n("NonZero", ["b"], ["i"]), cast("i")], [ZERO]),
}
for op in ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceProd", "ReduceLogSumExp"):
    CASES[op] = ([n(op, ["x", "axes"], ["y"], keepdims=0)], [init("axes", np.array([1, 3], np.int64))])
CASES["ReduceLogSum"] = ([n("Abs", ["x"], ["a"]), n("ReduceLogSum", ["a", "axes"], ["y"])],
                         [init("axes", np.array([-1], np.int64))])
CASES["ReduceL2 opset 13"] = ([n("ReduceL2", ["x"], ["y"], axes=[0, 2])], [])

# onnxruntime's RMS normalisation (its domain "": T5 and Llama exports its optimizer fused), over
# the last two axes; the ONNX operator (opset 23) is checked by the node tests of
# test_interpreter_corpus.py.
CASES["SimplifiedLayerNormalization"] = ([n("SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=-2,
                                            epsilon=1e-3)],
                                         [init("g", RNG.standard_normal((4, 5)).astype(np.float32))])
SHAPES = {"DepthToSpace": (2, 8, 3, 2), "DepthToSpace CRD": (2, 8, 3, 2), "SpaceToDepth": (2, 3, 4, 6)}
CASES["DepthToSpace"] = ([n("DepthToSpace", ["x"], ["y"], blocksize=2)], [])
CASES["DepthToSpace CRD"] = ([n("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")], [])
CASES["SpaceToDepth"] = ([n("SpaceToDepth", ["x"], ["y"], blocksize=2)], [])
OPSETS = {"Pad opset 10": 10, "ReduceL2 opset 13": 13}


def recurrent_case(kind, direction, output, gru_lbr=0, peepholes=False, lens=None):
    """A recurrent node over x ([seq 4, batch 2, input 5]), hidden 3, every weight and an
    initial state given; ``output``: 0 (Y), 1 (Y_h), 2 (Y_c); with ``peepholes`` an LSTM
    has them and every sequence length given (the input's); ``lens``: the samples' lengths."""
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    d = 2 if direction == "bidirectional" else 1
    h0 = (d, 2, 3)
    inits = [init("W", RNG.standard_normal((d, g * 3, 5)).astype(np.float32)),
             init("R", RNG.standard_normal((d, g * 3, 3)).astype(np.float32)),
             init("B", RNG.standard_normal((d, 2 * g * 3)).astype(np.float32)),
             init("h0", RNG.standard_normal(h0).astype(np.float32))]
    ins = ["x", "W", "R", "B", "lens" if peepholes else "", "h0"]
    if kind == "LSTM":
        inits.append(init("c0", RNG.standard_normal(h0).astype(np.float32)))
        ins.append("c0")
    if peepholes:
        inits += [init("lens", np.full(2, 4, np.int32)), init("P", RNG.standard_normal((d, 9)).astype(np.float32))]
        ins.append("P")
    if lens is not None:
        inits.append(init("lens", np.array(lens, np.int32)))
        ins[4] = "lens"
    outs = ["Y", "Y_h", "Y_c"][: 3 if kind == "LSTM" else 2]
    kw = {"linear_before_reset": gru_lbr} if kind == "GRU" else {}
    node = n(kind, ins, outs, hidden_size=3, direction=direction, **kw)
    return [node, n("Identity", [outs[output]], ["y"])], inits


for kind in ("LSTM", "GRU", "RNN"):
    for direction in ("forward", "reverse", "bidirectional"):
        for output in range(3 if kind == "LSTM" else 2):
            for lbr in (0, 1) if kind == "GRU" else (0,):
                case = f"{kind} {direction} output {output}" + (" linear_before_reset" if lbr else "")
                CASES[case] = recurrent_case(kind, direction, output, gru_lbr=lbr)
                SHAPES[case] = (4, 2, 5)
                OPSETS[case] = 14
        for output in range(3 if kind == "LSTM" else 2):
            case = f"{kind} {direction} output {output} sequences of 2 and 3 steps"
            CASES[case] = recurrent_case(kind, direction, output, lens=[2, 3])
            SHAPES[case], OPSETS[case] = (4, 2, 5), 14
        for output in range(3) if kind == "LSTM" else ():
            case = f"LSTM {direction} output {output} peepholes"
            CASES[case] = recurrent_case(kind, direction, output, peepholes=True)
            SHAPES[case], OPSETS[case] = (4, 2, 5), 14


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_operator_runs_as_onnxruntime_runs_it(case):
    nodes, inits = CASES[case]
    shape = SHAPES.get(case, (2, 3, 4, 5))
    m = model(nodes, inits, shape=shape, opset=OPSETS.get(case, 18))
    x = RNG.standard_normal(shape).astype(np.float32)
    assert tg.check(m, x) <= 1e-4


def contrib(node, inits=(), shape=(2, 3, 8)):
    """A model of one com.microsoft node (onnxruntime's contrib operators)."""
    x = helper.make_tensor_value_info("x", F32, list(shape))
    outs = [helper.make_tensor_value_info(o, F32, None) for o in node.output if o]
    g = helper.make_graph([node], "contrib", [x], outs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


def vec(name, n=8):
    return init(name, RNG.standard_normal((n,)).astype(np.float32))


def cm(op, ins, outs=("y",), **kw):
    return helper.make_node(op, ins, list(outs), domain="com.microsoft", **kw)


CONTRIB = {
    "Gelu": (cm("Gelu", ["x"]), []),
    "FastGelu": (cm("FastGelu", ["x", "b"]), [vec("b")]),
    "FastGelu without bias": (cm("FastGelu", ["x"]), []),
    "BiasGelu": (cm("BiasGelu", ["x", "b"]), [vec("b")]),
    "QuickGelu": (cm("QuickGelu", ["x"], alpha=1.5), []),
    "SkipLayerNormalization": (cm("SkipLayerNormalization", ["x", "s", "g", "be", "bi"], epsilon=1e-5),
                               [init("s", RNG.standard_normal((2, 3, 8)).astype(np.float32)), vec("g"), vec("be"),
                                vec("bi")]),
    "SkipLayerNormalization, sum output": (cm("SkipLayerNormalization", ["x", "s", "g"], ("n", "", "", "y")),
                                           [init("s", RNG.standard_normal((2, 3, 8)).astype(np.float32)), vec("g")]),
    "SkipSimplifiedLayerNormalization": (cm("SkipSimplifiedLayerNormalization", ["x", "s", "g"], epsilon=1e-6),
                                         [init("s", RNG.standard_normal((2, 3, 8)).astype(np.float32)), vec("g")]),
    **{f"Attention{name}": (cm("Attention", ["x", "aw", "ab", *extra], **kw),
                            [init("aw", RNG.standard_normal((8, width)).astype(np.float32)), vec("ab", width), *inits])
       for name, extra, inits, width, kw in [
           ("", [], [], 24, dict(num_heads=2)),
           (", key lengths", ["m"], [init("m", np.array([3, 1], np.int32))], 24, dict(num_heads=2)),
           (", key ends and starts", ["m"], [init("m", np.array([3, 2, 0, 1], np.int32))], 24, dict(num_heads=2)),
           (", 2-D mask", ["m"], [init("m", np.array([[1, 1, 0], [1, 0, 1]], np.int32))], 24,
            dict(num_heads=2, mask_filter_value=-50.0)),
           (", 3-D mask", ["m"], [init("m", np.array([[[1, 0, 0], [1, 1, 0], [0, 1, 1]]] * 2, np.int32))], 24,
            dict(num_heads=4)),
           (", unidirectional", [], [], 24, dict(num_heads=2, unidirectional=1)),
           (", Q K V sizes and scale", [], [], 20, dict(num_heads=2, qkv_hidden_sizes=[8, 8, 4], scale=0.3)),
           (", attention bias", ["", "", "bias"], [init("bias", RNG.standard_normal((1, 2, 3, 3)).astype(np.float32))],
            24, dict(num_heads=2)),
       ]},
    # Past state ([2, B, heads, 2 steps, head size]): the output, and the present state.
    **{f"Attention, past state{name}": (cm("Attention", ["x", "aw", "ab", *extra], outs, num_heads=2, **kw),
                                        [init("aw", RNG.standard_normal((8, 24)).astype(np.float32)), vec("ab", 24),
                                         init("past", RNG.standard_normal((2, 2, 2, 2, 4)).astype(np.float32)),
                                         *inits])
       for name, extra, inits, outs, kw in [
           ("", ["", "past"], [], ("y", "present"), {}),
           (", unidirectional, 2-D mask", ["m", "past"], [init("m", np.array([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]],
                                                                          np.int32))], ("y", "present"),
            dict(unidirectional=1)),
           (", present", ["", "past"], [], ("a", "y"), dict(unidirectional=1)),
       ]},
}


def embed(extra_nodes=(), segments=True, mask=True, positions=False, outs=("y",)):
    """A model of ``EmbedLayerNormalization`` on int32 token ids ``[2, 5]`` (vocabulary 7)."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT32, [2, 5])
    inits = [init("word", RNG.standard_normal((7, 8)).astype(np.float32)),
             init("pos", RNG.standard_normal((6, 8)).astype(np.float32)), vec("g"), vec("be"),
             init("seg", np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], np.int32)),
             init("segw", RNG.standard_normal((2, 8)).astype(np.float32)),
             init("mask", np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)),
             init("pid", np.array([[1, 2, 3, 4, 5]], np.int32))]
    ins = ["ids", "seg" if segments else "", "word", "pos", "segw" if segments else "", "g", "be",
           "mask" if mask else "", "pid" if positions else ""]
    node = cm("EmbedLayerNormalization", ins, ("e", "mi", "sum"), epsilon=1e-5)
    out = [helper.make_tensor_value_info(o, F32, None) for o in outs]
    g = helper.make_graph([node, *extra_nodes], "embed", [ids], out, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


EMBED = {
    "segments and mask": embed([n("Identity", ["e"], ["y"])]),
    "no segments, position ids": embed([n("Identity", ["e"], ["y"])], segments=False, positions=True),
    "the sum before normalising": embed([n("Identity", ["sum"], ["y"])]),
    "mask_index": embed([cast("mi")]),
    "into Attention's key lengths, as the optimizer fuses a BERT":
        embed([cm("Attention", ["e", "aw", "ab", "mi"], num_heads=2)]),
}
EMBED["into Attention's key lengths, as the optimizer fuses a BERT"].graph.initializer.extend(
    [init("aw", RNG.standard_normal((8, 24)).astype(np.float32)), vec("ab", 24)])


@pytest.mark.parametrize("case", sorted(EMBED))
def test_embed_layer_normalization_runs_as_onnxruntime_runs_it(case):
    ids = RNG.integers(0, 7, size=(2, 5)).astype(np.int32)
    assert tg.check(EMBED[case], ids) <= 1e-4


@pytest.mark.parametrize("extra, inits, what", [
    (["", "past", "", "psl"], [init("past", np.zeros((2, 2, 2, 1, 4), np.float32)), init("psl", np.int32(1))],
     "Attention with a shared past buffer"),
    (["m"], [init("m", np.ones((2, 1, 4, 4), np.int32))], r"Attention with a mask_index of shape \(2, 1, 4, 4\)"),
])
def test_what_attention_does_not_cover_is_refused_by_name(extra, inits, what):
    m = contrib(cm("Attention", ["x", "aw", "ab", *extra], num_heads=2),
                [init("aw", RNG.standard_normal((8, 24)).astype(np.float32)), vec("ab", 24), *inits])
    with pytest.raises(tg.Unsupported, match=what):
        tg.TorchGraph(m)(torch.from_numpy(RNG.standard_normal((2, 3, 8)).astype(np.float32)))


@pytest.mark.parametrize("case", sorted(CONTRIB))
def test_each_contrib_operator_runs_as_onnxruntime_runs_it(case):
    node, inits = CONTRIB[case]
    m = contrib(node, inits)
    if node.output[0] != "y":  # the graph's first output is the one compared
        m.graph.output.sort(key=lambda o: o.name != "y")
    assert tg.check(m, RNG.standard_normal((2, 3, 8)).astype(np.float32)) <= 1e-4


def test_every_new_operator_is_checked_here():
    from onnx_protect._torch_contrib import CONTRIB_OPS, FUSED  # FUSED: test_assess_optimized.py
    from onnx_protect._torch_ops import MORE_OPS
    from onnx_protect._torch_rnn import GATES
    covered = {op for nodes, _ in CASES.values() for op in (nd.op_type for nd in nodes)}
    assert (set(MORE_OPS) | set(GATES)) - covered == set()
    embedded = {nd.op_type for m in EMBED.values() for nd in m.graph.node if nd.domain == "com.microsoft"}
    assert {nd.op_type for nd, _ in CONTRIB.values()} | embedded | set(FUSED) == CONTRIB_OPS
    assert set(MORE_OPS) | set(GATES) <= tg.SUPPORTED_OPS


@pytest.mark.parametrize("node, inits, what", [
    (n("Resize", ["x", "", "s"], ["y"], mode="cubic", coordinate_transformation_mode="tf_crop_and_resize"),
     [init("s", np.array([1, 1, 2, 2], np.float32))], "Resize in mode cubic"),
    (n("Pad", ["x", "p"], ["y"], mode="reflect"), [init("p", np.array([1, 0, 0, 0, 0, 0, 0, 0], np.int64))],
     "Pad in mode reflect"),
    (n("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]), [], "AveragePool with dilations"),
    (n("Resize", ["x", "", "s"], ["y"], mode="linear", antialias=1),
     [init("s", np.array([1, 1, 0.5, 0.5], np.float32))], "Resize with these attributes"),
    (n("Mod", ["x", "m"], ["y"]), [init("m", np.float32(0.7))], "Mod of floating-point values"),
])
def test_what_a_case_does_not_cover_is_refused_by_name(node, inits, what):
    m = model([node], inits)
    with pytest.raises(tg.Unsupported, match=what):
        tg.TorchGraph(m)(torch.from_numpy(RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)))


def test_gradients_reach_constants_through_the_new_operators():
    """Weights read through Einsum, Pad, ConvTranspose, Resize, CumSum and ScatterND get a
    gradient (the attacks train every encrypted weight)."""
    wt = RNG.standard_normal((3, 3, 3, 3)).astype(np.float32)
    nodes = [n("Einsum", ["x", "w55"], ["e"], equation="bcij,jk->bcik"),
             n("Pad", ["e", "p"], ["pd"]),
             n("ConvTranspose", ["pd", "wt"], ["ct"], strides=[2, 2]),
             n("Resize", ["ct", "", "s"], ["rs"], mode="linear"),
             n("CumSum", ["rs", "ax"], ["cs"]),
             n("ScatterND", ["cs", "si", "su"], ["y"])]
    inits = [init("w55", RNG.standard_normal((5, 5)).astype(np.float32)), init("p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
             init("wt", wt), init("s", np.array([1, 1, 0.5, 0.5], np.float32)), init("ax", np.int64(3)),
             init("si", np.array([[0, 0]], np.int64)), init("su", RNG.standard_normal((1, 6, 7)).astype(np.float32))]
    m = model(nodes, inits)
    g = tg.TorchGraph(m)
    g.train()
    out = g(torch.from_numpy(RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)))
    out.square().sum().backward()
    grads = {c.name: g.params[c.key].grad for c in g.constants.values()}
    for name in ("w55", "wt", "su"):  # Resize's scales are a shape: no gradient
        assert grads[name] is not None and torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0, name
