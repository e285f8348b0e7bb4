"""Cost of `onnx_protect.InferenceSession` (protected model, decrypted in memory) against
`onnxruntime.InferenceSession` (the plain file), side by side.

    python3 bench/python_session.py [--runs N] [--small-runs N] [--dir DIR] [--big-mib MIB] [--json OUT] [--no-prepacking]
                                    [--other PYTHON]

Models: every fixtures/digits model, and a generated MLP of MIB MiB of float32 weights
in one external data file (default 512 MiB; generated once into DIR, which defaults to
bench-data/python-session, ignored by git). Each model is protected with the default
policy and a key file.

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
copy of MatMul weights beside the ones it is given). With --other PYTHON, also `protected`
and `load only` run by that interpreter (a virtual environment with another build of
onnx_protect), interleaved with the rest: two builds side by side. Each build reads a protected copy
that it wrote itself (a build may not read what a newer one writes).

Each measurement is one fresh Python process: it imports onnxruntime and onnx_protect,
then times the session creation alone (`time.perf_counter`) and reads its peak resident
set (VmHWM) and its resident set before the session (VmRSS). Runs of the variants
are interleaved (plain, protected, ..., then the next round starting one variant later)
after one warm-up run of each, so the page cache is warm for all; the table gives medians and the ratio to
`plain` (and, as "paired ratio", the median of each round's time over the plain file's time
in the same round). "peak above start" is VmHWM minus the VmRSS before the session. Needs onnx, onnxruntime, numpy
and the installed onnx_protect package.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import onnxruntime as ort
import onnx_protect

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)

variant, model, key = sys.argv[1:4]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
if variant.endswith(", no prepacking"):
    variant = variant[: -len(", no prepacking")]
    so.add_session_config_entry("session.disable_prepacking", "1")
if variant == "plain-in-memory":
    import os
    import numpy as np
    folder = os.path.dirname(model)
    with open(model, "rb") as f:
        model_bytes = f.read()
    files = {n: np.fromfile(os.path.join(folder, n), dtype=np.uint8) for n in os.listdir(folder) if n.endswith(".bin")}
start_rss = status("VmRSS")
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
else:
    s = onnx_protect.InferenceSession(model, so, ["CPUExecutionProvider"], key_file=key,
                                      in_place=None if variant == "protected" else False)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "start_rss": start_rss, "peak_rss": status("VmHWM")}))
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


def measure(variant, model, key, other=None):
    """One fresh process; a variant ending in " (other)" runs on the interpreter `other`."""
    python = sys.executable
    if variant.endswith(" (other)"):
        variant, python = variant[: -len(" (other)")], other
    r = subprocess.run([python, "-c", CHILD, variant, str(model), str(key)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--small-runs", type=int,
                    help="rounds for the models under 1 MiB, whose sessions take milliseconds (default: 3 × --runs)")
    ap.add_argument("--dir", type=pathlib.Path, default=ROOT / "bench-data" / "python-session")
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--other", metavar="PYTHON",
                    help="also `protected` and `load only` with another interpreter's onnx_protect (another build)")
    ap.add_argument("--no-prepacking", action="store_true",
                    help="also `plain` and `protected` with onnxruntime's session.disable_prepacking")
    a = ap.parse_args()
    import onnx_protect

    a.dir.mkdir(parents=True, exist_ok=True)
    key = a.dir / "bench.key"
    if not key.exists():
        onnx_protect.keygen(key)
    models = [(p.stem, p) for p in sorted((ROOT / "fixtures" / "digits").glob("*.onnx"))]
    big = a.dir / "big" / "model.onnx"
    if not big.exists():
        t = time.perf_counter()
        n = big_model(big, a.big_mib)
        print(f"generated {big} ({n / 2**20:.0f} MiB of weights) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    models.append((f"mlp {a.big_mib} MiB, external data", big))
    rows = []
    for name, plain in models:
        protected = a.dir / "protected" / plain.parent.name / plain.name
        if not protected.exists():
            protected.parent.mkdir(parents=True, exist_ok=True)
            onnx_protect.encrypt(plain, protected, key_file=key)
        other_copy = a.dir / "protected-other" / plain.parent.name / plain.name
        if a.other and not other_copy.exists():
            other_copy.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([a.other, "-c", "import sys, onnx_protect; onnx_protect.encrypt(*sys.argv[1:3], key_file=sys.argv[3])",
                            str(plain), str(other_copy), str(key)], check=True)
        enc_bytes = onnx_protect.inspect(protected)["protection"]["encrypted_bytes"]
        size = plain.stat().st_size + sum(f.stat().st_size for f in plain.parent.glob("*.bin"))
        variants = ["plain", "plain-in-memory", "protected", "protected, whole", "protected-copy", "load only"]
        if a.no_prepacking:
            variants += ["plain, no prepacking", "protected, no prepacking"]
        if a.other:
            variants += ["protected (other)", "load only (other)"]
        runs = {v: [] for v in variants}
        model_of = {v: plain if v.startswith("plain") else other_copy if v.endswith(" (other)") else protected
                    for v in variants}
        for v in variants:  # warm-up (page cache, imports)
            measure(v, model_of[v], key, a.other)
        rounds = a.runs if size >= 1 << 20 else (a.small_runs or 3 * a.runs)
        for r in range(rounds):
            # Each round starts one variant later, so that no variant always follows the
            # same one (the machine's state after a process differs by what it ran).
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                runs[v].append(measure(v, model_of[v], key, a.other))
        med = {}
        for v, rs in runs.items():
            m = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "start_rss", "peak_rss")}
            m["above_start"] = statistics.median(r["peak_rss"] - r["start_rss"] for r in rs)
            # The time against the plain file's in the same round: slow drifts of the
            # machine's speed cancel out.
            m["paired"] = statistics.median(x["seconds"] / y["seconds"] for x, y in zip(rs, runs["plain"]))
            med[v] = m
        rows.append({"model": name, "bytes": size, "encrypted_bytes": enc_bytes, "runs": rounds, "median": med, "all": runs})
        print(f"{name}: done", file=sys.stderr)
    mib = 2**20
    print("| model | size | encrypted | rounds | variant | session creation | ratio | paired ratio | peak RSS | ratio "
          "| peak above start | ratio |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        p = r["median"]["plain"]
        for v, q in r["median"].items():
            print(
                f"| {r['model']} | {r['bytes'] / mib:.2f} MiB | {r['encrypted_bytes'] / mib:.2f} MiB | {r['runs']} | {v} "
                f"| {q['seconds'] * 1e3:.1f} ms | {q['seconds'] / p['seconds']:.2f}× | {q['paired']:.2f}× "
                f"| {q['peak_rss'] / mib:.0f} MiB | {q['peak_rss'] / p['peak_rss']:.2f}× "
                f"| {q['above_start'] / mib:.1f} MiB | {q['above_start'] / max(p['above_start'], 1):.2f}× |"
            )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
