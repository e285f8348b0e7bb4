"""The PyTorch interpreter of ``onnx_protect.assess`` on architectures as users export them:
torchvision classifiers, Hugging Face ``transformers`` models and, where ``timm`` is installed
(``pip install timm``), ``timm`` classifiers (random initialisation, small configurations), exported by ``torch.onnx.export`` with the TorchScript exporter
(``dynamo=False``, a dynamic batch axis) and with ``torch.export`` (``dynamo=True``, the batch
fixed at 2), then run by the interpreter and by onnxruntime (``_torch_graph.check``) and trained
one step (a backward pass reaches the weights). One line per model and exporter: ``OK`` with
the largest difference relative to the largest output, ``FAIL`` with the interpreter's or the
check's one-line reason, or ``EXPORT`` when PyTorch itself cannot export the model.

    python3 scripts/eval_exports.py [--only NAME,...] [--exporter torchscript|dynamo]
"""
import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import warnings

import numpy as np
import onnx
import torch

from onnx_protect import _torch_graph as tg

VISION = ["resnet50", "densenet121", "squeezenet1_1", "shufflenet_v2_x0_5", "googlenet", "inception_v3",
          "regnet_y_400mf", "efficientnet_b0", "efficientnet_v2_s", "mnasnet0_5", "convnext_tiny", "vit_b_16",
          "swin_t", "alexnet", "vgg11_bn", "wide_resnet50_2", "resnext50_32x4d", "mobilenet_v2",
          "mobilenet_v3_large"]
TEXT = ["gpt2", "distilbert", "roberta", "llama", "t5-encoder", "hf-vit", "whisper-encoder"]
TIMM = ["timm:" + n for n in ("efficientnet_lite0", "mobilevit_xs", "deit_tiny_patch16_224", "levit_128s",
                              "mixer_s16_224", "poolformer_s12", "ghostnet_100", "rexnet_100", "hrnet_w18_small",
                              "dla34", "cspresnet50", "convnextv2_atto", "fastvit_t8", "repvit_m1",
                              "edgenext_xx_small", "tinynet_a", "mobilenetv4_conv_small")]


def timm_model(name):
    import timm

    name = name.split(":", 1)[1]
    sized = name.startswith(("mobilevit", "deit", "levit", "mixer"))
    net = timm.create_model(name, pretrained=False, num_classes=10, **({"img_size": 64} if sized else {}))
    return net, torch.randn(4, 3, 64, 64)


def vision(name):
    import torchvision

    kw = {"num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        kw |= {"aux_logits": False, "init_weights": True}
    if name == "vit_b_16":
        kw["image_size"] = 64
    side = 96 if name == "inception_v3" else 64
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, side, side)).astype(np.float32))
    return getattr(torchvision.models, name)(**kw), x


def text(name):
    import transformers as T

    small = dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64, vocab_size=100)
    made = {
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64)),
        "distilbert": lambda: T.DistilBertForSequenceClassification(
            T.DistilBertConfig(n_layers=2, n_heads=2, dim=32, hidden_dim=64, vocab_size=100, num_labels=3)),
        "roberta": lambda: T.RobertaForTokenClassification(T.RobertaConfig(**small, num_labels=5)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**small, num_key_value_heads=1)),
        "t5-encoder": lambda: T.T5EncoderModel(T.T5Config(num_layers=2, num_heads=2, d_model=32, d_kv=16, d_ff=64,
                                                           vocab_size=100)),
        "hf-vit": lambda: T.ViTForImageClassification(T.ViTConfig(**{**small, "vocab_size": None}, image_size=32,
                                                                   patch_size=8, num_labels=10)),
        "whisper-encoder": lambda: T.WhisperForAudioClassification(T.WhisperConfig(
            encoder_layers=2, encoder_attention_heads=2, d_model=32, encoder_ffn_dim=64, num_mel_bins=16,
            max_source_positions=50, num_labels=4)),
    }[name]()
    x = (torch.randn(4, 3, 32, 32) if name == "hf-vit" else torch.randn(4, 16, 100) if name == "whisper-encoder"
         else torch.randint(0, 100, (4, 12)))
    return made, x


class Scores(torch.nn.Module):
    """A model's logits (or last hidden state) as its only output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@contextlib.contextmanager
def quiet():
    """PyTorch's exporters write their progress and failed graphs to the process's stdout and
    stderr: both go to /dev/null meanwhile."""
    sys.stdout.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def one(name, exporter, folder):
    torch.manual_seed(0)
    net, x = vision(name) if name in VISION else timm_model(name) if name in TIMM else text(name)
    net = Scores(net.eval()).eval()
    path = os.path.join(folder, f"{name}.{exporter}.onnx")
    try:
        with warnings.catch_warnings(), quiet():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                torch.onnx.export(net, (x[:2],), path, input_names=["x"], dynamo=True, external_data=False,
                                  verbose=False)
            else:
                torch.onnx.export(net, (x[:1],), path, input_names=["x"], dynamic_axes={"x": {0: "b"}},
                                  dynamo=False, opset_version=17)
    except Exception as e:  # PyTorch's own exporters raise many kinds
        return "EXPORT", " ".join(str(e).split())[:120]
    try:
        model = onnx.load(path)
        err = tg.check(model, x.numpy())
        g = tg.TorchGraph(model).train()
        g(x).float().sum().backward()
        trained = sum(p.grad is not None for p in g.params.values())
        return "OK", f"{err:.1e} ({trained} weights reached)"
    except (tg.Unsupported, RuntimeError, ValueError) as e:
        return "FAIL", " ".join(str(e).split())[:200]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--exporter", choices=["torchscript", "dynamo"], action="append")
    args = ap.parse_args(argv)
    known = VISION + TEXT + TIMM
    names = args.only.split(",") if args.only else known
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"eval_exports: unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if importlib.util.find_spec("timm") is None:
        if any(n in TIMM for n in names):
            print("timm is not installed: its models are left out (pip install timm)", flush=True)
        names = [n for n in names if n not in TIMM]
    torch.set_num_threads(int(os.environ.get("ONNX_PROTECT_THREADS", "1")))
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            for exporter in args.exporter or ["torchscript", "dynamo"]:
                status, detail = one(name, exporter, folder)
                print(f"{name} {exporter} {status} {detail}", flush=True)


if __name__ == "__main__":
    main()
