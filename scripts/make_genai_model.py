#!/usr/bin/env python3
"""Makes an onnxruntime-genai model folder offline: a decoder with random weights and a tokenizer trained here.

    python3 scripts/make_genai_model.py OUT_DIR --precision fp32|int4 [--size tiny|bench]
        [--arch llama|qwen2] [--seed N] [--verbose]

Steps, all on this machine (nothing is downloaded: HF_HUB_OFFLINE=1):
  1. a text of sentences drawn from a fixed English word list and from made-up words of random
     syllables, more of them for the larger vocabularies (Python's `random`, seeded);
  2. a byte-level BPE tokenizer trained on it with `tokenizers` and saved through
     `transformers.PreTrainedTokenizerFast` (tokenizer.json, tokenizer_config.json);
  3. a `transformers` LlamaConfig (or Qwen2Config) of the chosen size, a causal LM initialised
     at random with `torch.manual_seed(seed)` and saved with `save_pretrained` into a work folder;
  4. onnxruntime-genai's model builder (`onnxruntime_genai.models.builder`, run in this process)
     turns that folder into model.onnx + model.onnx.data (every initializer in the external
     data file), genai_config.json and the tokenizer files, for the CPU at fp32 or int4 (int4:
     the MatMuls become com.microsoft MatMulNBits, 4 bits, blocks of 32; the embedding stays
     fp32).

The folder appears complete or not at all: everything is made in a work folder beside OUT_DIR
and renamed to OUT_DIR at the end. OUT_DIR must not exist or be an empty directory. The same
seed, size, architecture and precision give the same bytes.

Importable: `make(out_dir, precision, size="tiny", seed=0) -> Path` (tests/python/test_genai_models.py).

Needs torch, transformers, tokenizers, onnx_ir and onnxruntime-genai (tests/requirements.txt,
tests/requirements-torch.txt).
"""
import argparse
import contextlib
import dataclasses
import gc
import importlib
import io
import logging
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

# No model, tokenizer or config is ever fetched: the builder and transformers only read the
# local work folder. Set before transformers (and huggingface_hub) are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PRECISIONS = ("fp32", "int4")
SIZES = ("tiny", "bench")
ARCHS = ("llama", "qwen2")
# What the generator imports, and the pip package each comes from.
REQUIRED = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("tokenizers", "tokenizers"),
    ("onnx_ir", "onnx-ir"),
    ("onnxruntime_genai", "onnxruntime-genai"),
)


class MissingPackage(RuntimeError):
    """A package the generator needs is not installed."""


class BuildError(RuntimeError):
    """onnxruntime-genai's model builder failed."""


@dataclasses.dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    context: int
    # Made-up words in the tokenizer's training text, and sentences of 16 words: enough
    # distinct byte pairs for the BPE trainer to reach `vocab`.
    made_up_words: int
    sentences: int


# tiny: 2.3 MB of fp32 weights (0.8 MB int4); a build takes half a second once torch,
# transformers and the builder are imported (10 s on the shared 2-core machine).
# bench: 1-2 GB of model.onnx.data. int4: the shape of Llama 3.2 1B (hidden 2048, MLP 8192,
# 32 heads, 8 KV heads, a 128256-token vocabulary) with 12 layers instead of 16 and untied
# embeddings, so the builder keeps the embedding fp32 (1.05 GB, most of the file) and
# quantizes the output head (tied, it would share one int4 matrix for both). fp32: hidden
# 1024, MLP 4096, 16 heads, 4 KV heads, 20 layers, 32000 tokens (0.37 billion parameters).
# The embedding and the output head are never tied.
SHAPES = {
    ("tiny", "fp32"): Shape(1024, 128, 256, 2, 4, 2, 256, 600, 2500),
    ("tiny", "int4"): Shape(1024, 128, 256, 2, 4, 2, 256, 600, 2500),
    ("bench", "fp32"): Shape(32000, 1024, 4096, 20, 16, 4, 4096, 60000, 60000),
    ("bench", "int4"): Shape(128256, 2048, 8192, 12, 32, 8, 4096, 250000, 200000),
}

# The tokenizer's special tokens: ids 0, 1, 2 (beginning, end, padding).
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# The everyday words of the training text (and of prompts in the tests).
WORDS = """
the a an and or but of to in on at by for with from up down over under into out about
after before between through again once here there when where why how all any both each
few more most other some such no not only own same so than too very can will just should
now is are was were be been being have has had do does did say says said go goes went make
made take took see saw come came know knew think thought look want give use find tell ask
work seem feel try leave call keep let begin show hear play run move live believe hold
bring write stand sit lose pay meet include set learn change lead understand watch follow
stop speak read grow open walk win offer remember love wait serve die send expect build
stay fall cut reach kill remain time year people way day man woman child world life hand
part place case week company system program question government number night point home
water room mother area money story fact month lot right study book eye job word business
issue side kind head house service friend father power hour game line end member law car
city name team minute idea kid body back parent face others level office door health art
war history party result morning reason research girl guy moment air teacher force
education quick brown fox lazy dog river stone bright small large old new good bad long
short high low early late young great little green red blue white black cold warm dark
light soft hard slow fast happy sad full empty first last next open clear
""".split()

CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"


def _require():
    """Imports the generator's packages, or raises MissingPackage naming the first missing one."""
    mods = {}
    for mod, pip_name in REQUIRED:
        try:
            mods[mod] = importlib.import_module(mod)
        except ImportError as e:
            raise MissingPackage(
                f"{pip_name} is not installed ({e}); pip install -r tests/requirements.txt "
                f"(torch: -r tests/requirements-torch.txt)"
            ) from None
    # A caller may have imported huggingface_hub before this module set HF_HUB_OFFLINE.
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    return mods


def training_text(shape, seed):
    """Sentences of 16 words: everyday words and made-up ones, about half of each."""
    rng = random.Random(f"text-{seed}")
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    syllables += [s + e for s in syllables for e in "nrstl"]
    made_up = {"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(shape.made_up_words)}
    made_up = sorted(made_up)
    # Words drawn with a long tail, as in real text: a few are frequent, most are rare.
    def word(pool):
        return pool[min(int(rng.paretovariate(0.8)) - 1, len(pool) - 1)] if rng.random() < 0.5 else rng.choice(pool)

    lines = []
    for _ in range(shape.sentences):
        words = [word(WORDS) if rng.random() < 0.5 else word(made_up) for _ in range(16)]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice(".!?,;:"))
    return lines


def make_tokenizer(shape, seed, hf_dir, mods):
    """A byte-level BPE of `shape.vocab` tokens trained on training_text, saved into hf_dir."""
    tokenizers = mods["tokenizers"]
    transformers = mods["transformers"]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=shape.vocab,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(shape, seed), trainer)
    if tok.get_vocab_size() != shape.vocab:
        raise BuildError(f"the tokenizer reached {tok.get_vocab_size()} tokens, not {shape.vocab}: too little training text")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(hf_dir)
    return {name: tok.token_to_id(name) for name in (BOS, EOS, PAD)}


def make_checkpoint(shape, arch, seed, hf_dir, ids, mods):
    """A causal LM of `shape` with random weights (seeded), saved into hf_dir as safetensors."""
    torch = mods["torch"]
    transformers = mods["transformers"]
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    config = config_class(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.context,
        tie_word_embeddings=False,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        initializer_range=INIT_STD,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        model = model_class(config).eval()
        spread(model, torch)
    model.save_pretrained(hf_dir)


# transformers' initialisation: normal with this standard deviation, norms at 1, biases at 0.
INIT_STD = 0.02
# The attention and MLP weights get a standard deviation of LINEAR_GAIN / sqrt(fan-in).
LINEAR_GAIN = 2.0


def spread(model, torch):
    """Weights under which greedy decoding wanders instead of repeating a few tokens.

    At transformers' initialisation (every matrix normal with std 0.02), greedy decoding of
    the tiny model often ends in a loop of one to three tokens (seed 0: one token repeated from
    the fourth generated token on); with the attention and MLP matrices at std 2/sqrt(fan-in)
    it did not, for seeds 0 to 7 and three prompts of 40 tokens (tests/python/test_genai_models.py
    checks that the tokens are varied). The embedding and the output head keep std 0.02. The norms'
    weights become 1 + N(0, 0.1) and the biases (qwen2's q, k, v) N(0, 0.02), so that no tensor
    of the model is a constant.
    """
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name:
            p.mul_(LINEAR_GAIN / (p.shape[1] ** 0.5) / INIT_STD)
        elif p.dim() == 1 and "norm" in name:
            p.add_(torch.randn_like(p), alpha=0.1)
        elif p.dim() == 1 and name.endswith(".bias"):
            p.normal_(0.0, INIT_STD)
        elif p.dim() != 2:
            raise BuildError(f"no initialisation rule for parameter {name} of shape {tuple(p.shape)}")


def run_builder(hf_dir, out_dir, cache_dir, precision):
    """onnxruntime-genai's model builder, in this process, for the CPU."""
    import onnxruntime_genai.models  # noqa: F401  (puts the builder's own modules on sys.path)
    from onnxruntime_genai.models import builder

    options = builder.parse_extra_options(None, str(hf_dir), str(out_dir), precision, "cpu", str(cache_dir), [])
    builder.create_model(None, str(hf_dir), str(out_dir), precision, "cpu", str(cache_dir), **options)


def make(out_dir, precision, size="tiny", seed=0, arch="llama", log=None):
    """Makes an onnxruntime-genai model folder at out_dir and returns its path.

    precision: "fp32" or "int4"; size: "tiny" or "bench"; arch: "llama" or "qwen2"; seed: the
    seed of the training text and of the weights. log: a text stream for the builder's output
    (default: discarded). Raises ValueError for a bad argument or an out_dir that is not empty,
    MissingPackage, or BuildError.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if size not in SIZES:
        raise ValueError(f"size {size!r}: expected one of {', '.join(SIZES)}")
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r}: expected one of {', '.join(ARCHS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed {seed!r}: expected an integer >= 0")
    out = pathlib.Path(out_dir).absolute()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty directory")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent}: no such directory")
    mods = _require()
    shape = SHAPES[(size, precision)]
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    sink = log if log is not None else io.StringIO()
    # Importing onnxruntime's int4 quantizer calls logging.basicConfig (a root handler on the
    # stderr of the moment, here the sink, and level INFO): the root logger is put back after.
    root_logger = logging.getLogger()
    root_state = (root_logger.level, list(root_logger.handlers))
    try:
        hf_dir = work / "hf"
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            ids = make_tokenizer(shape, seed, hf_dir, mods)
            make_checkpoint(shape, arch, seed, hf_dir, ids, mods)
            gc.collect()  # the model's weights, before the builder loads them again
            try:
                run_builder(hf_dir, work / "out", work / "cache", precision)
            except Exception as e:
                message = " ".join(str(e).split()) or "(no message)"
                raise BuildError(f"onnxruntime-genai's model builder failed: {type(e).__name__}: {message}") from e
        made = sorted(p.name for p in (work / "out").iterdir())
        for needed in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"):
            if needed not in made:
                raise BuildError(f"the model builder wrote no {needed} (it wrote {', '.join(made)})")
        os.replace(work / "out", out)
    finally:
        root_logger.setLevel(root_state[0])
        root_logger.handlers[:] = root_state[1]
        shutil.rmtree(work, ignore_errors=True)
    return out


def _size(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=pathlib.Path, help="the folder to make (must not exist, or be empty)")
    ap.add_argument("--precision", required=True, choices=PRECISIONS)
    ap.add_argument("--size", default="tiny", choices=SIZES, help="tiny: a few MB, for tests; bench: 1-2 GB of weights")
    ap.add_argument("--arch", default="llama", choices=ARCHS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="show the model builder's output")
    a = ap.parse_args(argv)
    start = time.monotonic()
    try:
        out = make(a.out_dir, a.precision, a.size, a.seed, a.arch, log=sys.stderr if a.verbose else None)
    except (ValueError, MissingPackage, BuildError) as e:
        print(f"make_genai_model.py: error: {e}", file=sys.stderr)
        return 1
    shape = SHAPES[(a.size, a.precision)]
    print(f"{out}: {a.arch} {a.precision}, {shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}, seed {a.seed}")
    total = 0
    for f in sorted(out.iterdir()):
        total += f.stat().st_size
        print(f"  {f.name:24} {_size(f.stat().st_size):>10}")
    print(f"  {'total':24} {_size(total):>10}   ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
