"""Cost of `onnx_protect.InferenceSession` (protected model, decrypted in memory) against
`onnxruntime.InferenceSession` (the plain file), side by side.

    python3 bench/python_session.py [--runs N] [--small-runs N] [--dir DIR] [--big-mib MIB] [--json OUT] [--no-prepacking]
                                    [--other PYTHON] [--set default|session-models] [--models ID,...]
                                    [--variants VARIANT ...] [--session-models-dir DIR] [--busy] [--crypto-rate]

Models: every fixtures/digits model (ids digits/cnn, ...) and, with `--set default` (the
default), a generated MLP of MIB MiB of float32 weights in one external data file (id
big-mlp; default 512 MiB; generated once into DIR, which defaults to
bench-data/python-session, ignored by git); with `--set session-models`, instead of the MLP,
the models of bench/make_session_models.py (VGG16, ResNet-50 and its float16 and int8 QDQ
variants, ViT-B/16 and its MatMulInteger variant, MobileNetV2, each as one file and with
external data, ids vgg16/single, vgg16/external, ...; and the int4 MatMulNBits decoder
stacks llm_2g/external and llm_8g/external), read from --session-models-dir (default
bench-data/session-models), the missing ones generated first. `--models` keeps the models
whose id is one of the given ones or starts with one of them and "/" (`--models
vgg16,digits/cnn`). Each model is protected with the default policy and a key file.

Variants: `plain` (onnxruntime.InferenceSession of the plain file: onnxruntime maps its
external data), `plain-in-memory` (onnxruntime from memory: the plain model's bytes and
external files, read before the timer starts, handed over with
`add_external_initializers_from_files_in_memory`, which copies them: onnxruntime's own
in-memory path), `protected` (onnx_protect.InferenceSession: large weights used in place,
the default; on Linux, external data filled on demand as onnxruntime reads it),
`protected, whole` (`on_demand=False`: external data decrypted whole first), `protected-copy` (`in_place=False`: every tensor in the graph handed over, which onnxruntime
copies) and `load only` (`onnx_protect.load` of the protected model, no session: every byte
verified and decrypted whole into memory). With --no-prepacking, also `plain` and
`protected` with onnxruntime's `session.disable_prepacking` (onnxruntime then keeps no packed
copy of MatMul weights beside the ones it is given), whose ratios are taken against
`plain, no prepacking` (`ort protected, no prepacking` against `ort plain, no prepacking`). With --other PYTHON, also `protected`
and `load only` run by that interpreter (a virtual environment with another build of
onnx_protect), interleaved with the rest: two builds side by side. Each build reads a protected copy
that it wrote itself (a build may not read what a newer one writes). `--variants` names the
variants to run instead (one of them `plain`, the reference of the ratios; e.g. `--variants
plain "plain, no prepacking"`, which needs no onnx_protect installed); only there
`protected, verified on read` (`verify_on_read=True`: external chunks verified when
onnxruntime first reads them; also `ort protected, verified on read`, and either with
", no prepacking"). With --ort, also the Rust `ort`
crate's `ort plain` (ort's own `commit_from_file` of the plain file) and `ort protected`
(`onnx_protect_ort::commit_from_file`), each a fresh process of examples/ort/session_cost.rs,
whose ratios are taken against `ort plain`. With --node, also onnxruntime-node's `node plain`
(`InferenceSession.create` of the plain file) and `node protected` (the package's
`createSessionFromFile`, native engine), each a fresh process of js/bench/session.mjs (the
package and its native engine built first, release), ratios against `node plain`. onnxruntime runs with its default options
(`--threads N` sets `intra_op_num_threads`).

Each measurement is one fresh Python process: it imports onnxruntime and onnx_protect,
then times the session creation alone (`time.perf_counter`), takes the CPU time its threads
ran meanwhile (`/proc/self/task/*/schedstat`), and reads its peak resident
set (VmHWM) and its resident set before the session (VmRSS). Runs of the variants
are interleaved (plain, protected, ..., then the next round starting one variant later)
after one warm-up run of each, so the page cache is warm for all; the table gives medians and the ratio to
`plain` (and, as "paired ratio", the median of each round's time over the plain file's time
in the same round). "peak above start" is VmHWM minus the VmRSS before the session. The
machine's load average (1, 5 and 15 minutes, `os.getloadavg`) is taken before and after each
model and the whole run, in the table and the JSON. A variant that holds two or three copies
of the weights at once (`plain-in-memory`, `protected-copy`, `protected, whole`) is skipped,
with a note, for a model too large for that in 80% of the machine's memory (llm_8g on 24
GiB). Needs onnx, onnxruntime, numpy and the
installed onnx_protect package.

With --busy, a process that spins on one core runs through each model's measurements (the
machine with one core busy). With --crypto-rate, the crypto crate's single-core
throughput (`--example throughput`, release) runs before and after the models, and each
protected variant's CPU time above its reference's is given per encrypted byte as a
multiple of BLAKE3 (4 MiB chunks) plus AES-CTR in place over the same bytes at those rates
("extra CPU ÷ crypto").
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import onnxruntime as ort
try:  # imported by every variant when installed, so that all start alike
    import onnx_protect
except ImportError:
    if not sys.argv[1].startswith("plain"):
        raise

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)

def cpu_seconds():  # every thread's run time so far (schedstat, nanoseconds)
    import os
    total = 0
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9

variant, model, key, data_files, threads = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
so = ort.SessionOptions()
if threads:
    so.intra_op_num_threads = threads
if variant.endswith(", no prepacking"):
    variant = variant[: -len(", no prepacking")]
    so.add_session_config_entry("session.disable_prepacking", "1")
if variant == "plain-in-memory":
    import os
    import numpy as np
    folder = os.path.dirname(model)
    with open(model, "rb") as f:
        model_bytes = f.read()
    files = {n: np.fromfile(os.path.join(folder, n), dtype=np.uint8) for n in data_files}
start_rss = status("VmRSS")
cpu = cpu_seconds()
t = time.perf_counter()
if variant == "plain-in-memory":
    if files:
        so.add_external_initializers_from_files_in_memory(list(files), list(files.values()), [a.size for a in files.values()])
    s = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
elif variant == "load only":
    s = onnx_protect.load(model, key_file=key)
elif variant == "plain":
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
elif variant == "protected, whole":
    s = onnx_protect.InferenceSession(model, so, ["CPUExecutionProvider"], key_file=key, on_demand=False)
elif variant == "protected, verified on read":
    s = onnx_protect.InferenceSession(model, so, ["CPUExecutionProvider"], key_file=key, verify_on_read=True)
else:
    s = onnx_protect.InferenceSession(model, so, ["CPUExecutionProvider"], key_file=key,
                                      in_place=None if variant == "protected" else False)
seconds = time.perf_counter() - t
cpu = cpu_seconds() - cpu
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "start_rss": start_rss, "peak_rss": status("VmHWM")}))
"""


def big_model(path, mib):
    """An MLP whose MatMul weights (float32, MIB MiB in all) live in one external file."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = 4096
    layer_bytes = width * width * 4
    layers = max(1, (mib << 20) // layer_bytes)
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        prev = f"r{i}"
        del w
    graph = helper.make_graph(
        nodes, "big_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=1024)
    return layers * layer_bytes


def data_files(model):
    """The external data files a model names (paths relative to its folder), sorted."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    names = set()
    graphs = [m.graph]
    while graphs:
        g = graphs.pop()
        for t in g.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                names.update(e.value for e in t.external_data if e.key == "location")
        for n in g.node:
            for a in n.attribute:
                graphs.extend([a.g] if a.HasField("g") else list(a.graphs))
    return sorted(names)


def measure(variant, model, key, files, other=None, threads=0, ort_bin=None):
    """One fresh process; a variant ending in " (other)" runs on the interpreter `other`,
    one starting with "ort " is the Rust `ort` crate's (examples/ort/session_cost.rs)."""
    python = sys.executable
    if variant.endswith(" (other)"):
        variant, python = variant[: -len(" (other)")], other
    if variant.startswith("ort "):
        v, prepack = variant[4:], "1"
        if v.endswith(", no prepacking"):
            v, prepack = v[: -len(", no prepacking")], "0"
        cmd = [str(ort_bin), v, str(model), str(key), str(threads), prepack]
    elif variant.startswith("node "):
        cmd = ["node", str(ROOT / "js" / "bench" / "session.mjs"), variant[5:], str(model), str(key), "--json"]
    else:
        cmd = [python, "-c", CHILD, variant, str(model), str(key), json.dumps(files), str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: {model}: variant {variant!r} failed (exit {r.returncode}): {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


VARIANTS = ["plain", "plain-in-memory", "protected", "protected, whole", "protected-copy", "load only"]
NO_PREPACKING = ["plain, no prepacking", "protected, no prepacking"]
# Run only when named in --variants (also with ", no prepacking", and after "ort ").
ON_READ = ["protected, verified on read"]
OTHER = ["protected (other)", "load only (other)"]
# The Rust `ort` crate: the plain file through ort's own commit_from_file, the protected one
# through onnx_protect_ort (ratios against "ort plain").
ORT = ["ort plain", "ort protected"]
# onnxruntime-node: the plain file, and the package's createSessionFromFile (against "node plain").
NODE = ["node plain", "node protected"]


def reference(variant, runs):
    """The variant a variant's ratios are taken against: "ort plain" for the ort crate's
    variants and "node plain" for onnxruntime-node's where they ran, else "plain"; for a
    variant with prepacking off, that plain variant with prepacking off where it ran."""
    plain = "plain"
    for runtime in ("ort", "node"):
        if variant.startswith(runtime + " ") and f"{runtime} plain" in runs:
            plain = f"{runtime} plain"
    off = f"{plain}, no prepacking"
    return off if variant.endswith(", no prepacking") and off in runs else plain


def session_models(folder, selected):
    """(id, path) of the models of bench/make_session_models.py in `folder` that `selected`
    keeps, the missing ones generated first."""
    sys.path.insert(0, str(ROOT / "bench"))
    import make_session_models as gen

    models, missing = [], []
    for name in gen.NAMES:
        for storage in ["external"] if name in gen.LLM_SHAPES else ["single", "external"]:
            mid = f"{name}/{storage}"
            if selected(mid):
                models.append((mid, folder / name / storage / "model.onnx"))
                if not models[-1][1].exists() and name not in missing:
                    missing.append(name)
    if missing:
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_session_models.py"), "--out", str(folder),
                        "--only", ",".join(missing)], check=True)
    return models


# Variants that hold more than one copy of the weights at once, and about how many (from
# peak RSS over the weights' size: plain-in-memory 2.8 for llm_2g, whole 2.1 for the MLP).
# A model for which that exceeds 80% of the machine's memory skips them.
COPIES = {"plain-in-memory": 3, "protected-copy": 3, "protected, whole": 2.5}


def crypto_rate():
    """Seconds per byte of AES-CTR in place and of BLAKE3 over 1 MiB leaves, one core, from
    the crypto crate's throughput example (256 MiB, median of 5)."""
    out = subprocess.run(["cargo", "run", "--release", "-q", "-p", "onnx-protect-crypto", "--example", "throughput",
                          "256", "5"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rate = {}
    for line in out.splitlines():
        for name in ("aes-ctr in place", "blake3 leaf (1 MiB leaves)"):
            if line.startswith(name + " "):
                rate[name] = 1 / (float(line.split()[-2]) * 1e9)
    if len(rate) != 2:
        raise SystemExit(f"error: the throughput example printed no rate for {sorted({'aes-ctr in place', 'blake3 leaf (1 MiB leaves)'} - set(rate))}")
    return rate


def mem_total():
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def main():
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--small-runs", type=int,
                    help="rounds for the models under 1 MiB, whose sessions take milliseconds (default: 3 × --runs)")
    ap.add_argument("--dir", type=pathlib.Path, default=ROOT / "bench-data" / "python-session")
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--other", metavar="PYTHON",
                    help="also `protected` and `load only` with another interpreter's onnx_protect (another build)")
    ap.add_argument("--debug-build", action="store_true",
                    help="time an onnx_protect built without optimisation (refused otherwise)")
    ap.add_argument("--no-prepacking", action="store_true",
                    help="also `plain` and `protected` with onnxruntime's session.disable_prepacking")
    ap.add_argument("--set", choices=["default", "session-models"], default="default",
                    help="default: the digits models and the generated MLP; session-models: the digits models and "
                         "those of bench/make_session_models.py")
    ap.add_argument("--session-models-dir", type=pathlib.Path, default=ROOT / "bench-data" / "session-models")
    ap.add_argument("--models", metavar="ID,...",
                    help="only these models: ids such as digits/cnn, big-mlp, vgg16/single, or their first part "
                         "(digits, vgg16)")
    ap.add_argument("--variants", nargs="+", metavar="VARIANT",
                    help="run these variants instead, `plain` among them: "
                         + ", ".join(f'"{v}"' for v in VARIANTS + NO_PREPACKING + OTHER))
    ap.add_argument("--threads", type=int, default=0,
                    help="onnxruntime's intra_op_num_threads (default 0: onnxruntime's default, one per core)")
    ap.add_argument("--busy", action="store_true", help="one core kept busy by a spinning process meanwhile")
    ap.add_argument("--crypto-rate", action="store_true",
                    help="measure BLAKE3 and AES-CTR on one core (cargo, release) and compare the extra CPU with them")
    ap.add_argument("--ort", action="store_true",
                    help="also the Rust ort crate's sessions (" + ", ".join(f'"{v}"' for v in ORT)
                         + "), built with cargo as examples/ort/session_cost (release)")
    ap.add_argument("--node", action="store_true",
                    help="also onnxruntime-node's sessions (" + ", ".join(f'"{v}"' for v in NODE)
                         + "), js/bench/session.mjs with the package and its native engine built (release)")
    a = ap.parse_args()
    ort_bin = None
    if a.ort or (a.variants and any(v.startswith("ort ") for v in a.variants)):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "onnx-protect-ort", "--example", "session_cost"],
                       cwd=ROOT, check=True)
        ort_bin = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release" / "examples" / "session_cost"
    if a.node or (a.variants and any(v.startswith("node ") for v in a.variants)):
        js = ROOT / "js"
        if not (js / "node_modules").exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=js, check=True)
        subprocess.run(["npm", "run", "-s", "build"], cwd=js, check=True)
        subprocess.run(["bash", "scripts/build-native.sh", "--release"], cwd=js, check=True, stdout=subprocess.DEVNULL)

    if a.variants:
        variants = list(dict.fromkeys(a.variants))
        ort = ORT + ["ort " + v for v in ON_READ]
        known = (VARIANTS + NO_PREPACKING + ON_READ + [v + ", no prepacking" for v in ON_READ] + ort
                 + [v + ", no prepacking" for v in ort] + NODE + (OTHER if a.other else []))
        bad = [v for v in variants if v not in known]
        if bad:
            ap.error(f"--variants: unknown variant {bad[0]!r} (known: {', '.join(repr(v) for v in known)})")
        if "plain" not in variants:
            ap.error("--variants: `plain` is needed, the reference of the ratios")
    else:
        variants = (VARIANTS + (NO_PREPACKING if a.no_prepacking else []) + (OTHER if a.other else [])
                    + (ORT if a.ort else []) + (NODE if a.node else []))
    needs_protect = any(not v.startswith("plain") for v in variants)
    wanted = [w.strip().rstrip("/") for w in a.models.split(",") if w.strip()] if a.models else None

    def selected(mid):
        return wanted is None or any(mid == w or mid.startswith(w + "/") for w in wanted)

    a.dir.mkdir(parents=True, exist_ok=True)
    key = a.dir / "bench.key"
    if needs_protect:
        import onnx_protect

        if not key.exists():
            onnx_protect.keygen(key)
    # (id, display name, plain model, protected copy's path under DIR/protected)
    models = [(f"digits/{p.stem}", p.stem, p, pathlib.Path(p.parent.name) / p.name)
              for p in sorted((ROOT / "fixtures" / "digits").glob("*.onnx"))]
    if a.set == "default" and selected("big-mlp"):
        big = a.dir / "big" / "model.onnx"
        if not big.exists():
            t = time.perf_counter()
            n = big_model(big, a.big_mib)
            print(f"generated {big} ({n / 2**20:.0f} MiB of weights) in {time.perf_counter() - t:.1f} s",
                  file=sys.stderr)
        models.append(("big-mlp", f"mlp {a.big_mib} MiB, external data", big, pathlib.Path("big") / "model.onnx"))
    if a.set == "session-models":
        models += [(mid, mid, p, pathlib.Path("session-models") / mid / p.name)
                   for mid, p in session_models(a.session_models_dir, selected)]
    models = [m for m in models if selected(m[0])]
    if not models:
        ap.error(f"--models: no model of the set {a.set!r} is called {a.models!r}")
    if needs_protect and not a.debug_build:
        for python in [sys.executable] + ([a.other] if a.other else []):
            probe = "import onnx_protect._native as n; print(getattr(n, 'RELEASE_BUILD', 'unknown'))"
            built = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip()
            if built == "False":
                ap.error(f"{python}'s onnx_protect is a debug build (scripts/test.sh installs one into "
                         "the Python it runs): install a release wheel (scripts/build-wheel.sh --release), "
                         "or pass --debug-build to time it anyway")
    if needs_protect:
        # Every protected copy made afresh, by the build measured: one left from an earlier
        # run may come from another build's `encrypt` (another chunk size, say).
        for d in ("protected", "protected-other"):
            shutil.rmtree(a.dir / d, ignore_errors=True)
    rates = [crypto_rate()] if a.crypto_rate else []
    load_start = loadavg()
    rows = []
    for mid, name, plain, rel in models:
        load_before = loadavg()
        files = data_files(plain)
        protected = a.dir / "protected" / rel
        other_copy = a.dir / "protected-other" / rel
        enc_bytes = None
        if needs_protect:
            if not protected.exists():
                protected.parent.mkdir(parents=True, exist_ok=True)
                onnx_protect.encrypt(plain, protected, key_file=key)
            if a.other and not other_copy.exists():
                other_copy.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run([a.other, "-c",
                                "import sys, onnx_protect; onnx_protect.encrypt(*sys.argv[1:3], key_file=sys.argv[3])",
                                str(plain), str(other_copy), str(key)], check=True)
            enc_bytes = onnx_protect.inspect(protected)["protection"]["encrypted_bytes"]
        size = plain.stat().st_size + sum((plain.parent / f).stat().st_size for f in files)
        skipped = [v for v in variants if COPIES.get(v, 0) * size > 0.8 * mem_total()]
        for v in skipped:
            print(f"{mid}: {v!r} skipped: it needs about {COPIES[v]} × {size / 2**30:.2f} GiB of memory, "
                  f"{mem_total() / 2**30:.1f} GiB here", file=sys.stderr)
        model_variants = [v for v in variants if v not in skipped]
        runs = {v: [] for v in model_variants}
        model_of = {v: plain if v.startswith(("plain", "ort plain", "node plain")) else other_copy if v.endswith(" (other)")
                    else protected for v in variants}
        # The plain model's data files; a protected copy's are found by onnx_protect itself.
        files_of = {v: files if v.startswith("plain") else [] for v in variants}
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.busy else None
        for v in model_variants:  # warm-up (page cache, imports)
            measure(v, model_of[v], key, files_of[v], a.other, a.threads, ort_bin)
        rounds = a.runs if size >= 1 << 20 else (a.small_runs or 3 * a.runs)
        n = len(model_variants)
        for r in range(rounds):
            # Each round starts one variant later, so that no variant always follows the
            # same one (the machine's state after a process differs by what it ran).
            for v in model_variants[r % n:] + model_variants[:r % n]:
                runs[v].append(measure(v, model_of[v], key, files_of[v], a.other, a.threads, ort_bin))
        if busy:
            busy.kill()
            busy.wait()
        med = {}
        for v, rs in runs.items():
            m = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu_seconds", "start_rss", "peak_rss")}
            m["above_start"] = statistics.median(r["peak_rss"] - r["start_rss"] for r in rs)
            # The time against the plain file's in the same round: slow drifts of the
            # machine's speed cancel out.
            m["paired"] = statistics.median(x["seconds"] / y["seconds"] for x, y in zip(rs, runs[reference(v, runs)]))
            med[v] = m
        rows.append({"id": mid, "model": name, "bytes": size, "data_files": files, "encrypted_bytes": enc_bytes,
                     "runs": rounds, "busy": a.busy, "load_before": load_before, "load_after": loadavg(), "skipped": skipped,
                     "median": med, "all": runs})
        print(f"{name}: done", file=sys.stderr)
    mib = 2**20
    load_end = loadavg()
    if a.crypto_rate:
        rates.append(crypto_rate())
        per_byte = statistics.mean(sum(r.values()) for r in rates)
        print(f"BLAKE3 + AES-CTR on one core: {1 / per_byte / 1e9:.2f} GB/s "
              f"({', '.join(f'{n} {1 / r[n] / 1e9:.2f}' for r in rates for n in r)} GB/s, before and after)")
    print(f"load average (1, 5, 15 min): {' '.join(map(str, load_start))} before, "
          f"{' '.join(map(str, load_end))} after; {os.cpu_count()} CPUs")
    print()
    print("| model | size | encrypted | rounds | load before, after | variant | session creation | ratio | paired ratio "
          "| CPU | extra CPU ÷ crypto | peak RSS | ratio | peak above start | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        enc = "-" if r["encrypted_bytes"] is None else f"{r['encrypted_bytes'] / mib:.2f} MiB"
        for v, q in r["median"].items():
            p = r["median"][reference(v, r["median"])]
            extra = "-"
            if a.crypto_rate and (r["encrypted_bytes"] or 0) >= 1 << 20 and not v.startswith(("plain", "ort plain", "node plain")):
                extra = f"{(q['cpu_seconds'] - p['cpu_seconds']) / (r['encrypted_bytes'] * per_byte):.2f}×"
            print(
                f"| {r['model']} | {r['bytes'] / mib:.2f} MiB | {enc} | {r['runs']} "
                f"| {r['load_before'][0]:.2f}, {r['load_after'][0]:.2f} | {v} "
                f"| {q['seconds'] * 1e3:.1f} ms | {q['seconds'] / p['seconds']:.2f}× | {q['paired']:.2f}× "
                f"| {q['cpu_seconds'] * 1e3:.0f} ms | {extra} "
                f"| {q['peak_rss'] / mib:.0f} MiB | {q['peak_rss'] / p['peak_rss']:.2f}× "
                f"| {q['above_start'] / mib:.1f} MiB | {q['above_start'] / max(p['above_start'], 1):.2f}× |"
            )
    if a.json:
        import onnxruntime

        a.json.write_text(json.dumps({"onnxruntime": onnxruntime.__version__, "cpus": os.cpu_count(),
                                      "crypto_rate": rates, "busy": a.busy,
                                      "load_before": load_start, "load_after": load_end, "rows": rows}, indent=1))

if __name__ == "__main__":
    main()
