#!/usr/bin/env python3
"""onnxruntime-genai: a protected model folder against the plain one, side by side.

    python3 bench/genai_session.py PLAIN_DIR PROTECTED_DIR --key-file KEY [--rounds 5] [--tokens 32]

Each measurement is a fresh Python process (plain and protected interleaved, after one
warm-up of each): the time `og.Model(PLAIN_DIR)` or `onnx_protect.genai.Model(PROTECTED_DIR,
key_file=KEY)` takes, the process's peak RSS and resident memory after it, greedy generation of `--tokens`
tokens after a short prompt (tokens per second of the generation loop) and resident memory after
it. Prints medians, the
ratios protected / plain and the load average before and after. The files are read from the
page cache (each process reads them; the first warm-up fills the cache).

Make the folders with `python3 scripts/make_genai_model.py DIR --precision int4 --size bench`
and `onnx-protect encrypt DIR -o PROTECTED_DIR --key-file KEY`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import onnxruntime_genai as og
mode, folder, key, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "protected":
    import onnx_protect.genai as opg
t0 = time.perf_counter()
m = og.Model(folder) if mode == "plain" else opg.Model(folder, key_file=key)
load = time.perf_counter() - t0
rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def vmrss():  # resident memory now (Linux)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
resident = vmrss()
tok = og.Tokenizer(m)
p = og.GeneratorParams(m)
prompt = tok.encode("the cat sat on the mat and")
p.set_search_options(do_sample=False, max_length=len(prompt) + tokens)
g = og.Generator(m, p)
g.append_tokens(prompt)
t1 = time.perf_counter()
n = 0
while not g.is_done():
    g.generate_next_token()
    n += 1
gen = time.perf_counter() - t1
seq = [int(t) for t in g.get_sequence(0)]
resident_gen = vmrss()
print(json.dumps({"load_s": load, "rss_mib": rss_load, "resident_mib": resident, "tokens_per_s": n / gen if gen else 0.0,
                  "resident_gen_mib": resident_gen, "sequence": seq}))
"""


KEYS = ("load_s", "rss_mib", "resident_mib", "tokens_per_s", "resident_gen_mib")


def once(mode, folder, key, tokens):
    r = subprocess.run([sys.executable, "-c", CHILD, mode, folder, key, str(tokens)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{mode} run failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plain")
    ap.add_argument("protected")
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    load_before = os.getloadavg()
    runs = {"plain": [], "protected": []}
    for mode, folder in (("plain", a.plain), ("protected", a.protected)):
        once(mode, folder, a.key_file, a.tokens)  # warm-up: page cache, first imports
    for _ in range(a.rounds):
        for mode, folder in (("plain", a.plain), ("protected", a.protected)):
            runs[mode].append(once(mode, folder, a.key_file, a.tokens))
    if runs["plain"][0]["sequence"] != runs["protected"][0]["sequence"]:
        sys.exit("the protected folder generated other tokens than the plain one")
    med = {m: {k: statistics.median(r[k] for r in rs) for k in KEYS}
           for m, rs in runs.items()}
    size = sum(os.path.getsize(os.path.join(a.plain, f)) for f in os.listdir(a.plain))
    print(f"plain folder {size / 2**30:.2f} GiB, {a.rounds} rounds, {a.tokens} tokens, load average "
          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'':10} {'load s':>8} {'peak RSS MiB':>13} {'resident MiB':>13} {'tokens/s':>9} {'resident after':>15}")
    for m in ("plain", "protected"):
        print(f"{m:10} {med[m]['load_s']:8.3f} {med[m]['rss_mib']:13.0f} {med[m]['resident_mib']:13.0f} "
              f"{med[m]['tokens_per_s']:9.1f} {med[m]['resident_gen_mib']:15.0f}")
    for m in ("plain", "protected"):  # the spread over rounds, to read the ratios against
        lo, hi = (f(x["tokens_per_s"] for x in runs[m]) for f in (min, max))
        ld = sorted(x["load_s"] for x in runs[m])
        print(f"{m:10} rounds: load {ld[0]:.3f}-{ld[-1]:.3f} s, tokens/s {lo:.1f}-{hi:.1f}")
    r = {k: med["protected"][k] / med["plain"][k] for k in KEYS}
    print(f"{'ratio':10} {r['load_s']:7.2f}x {r['rss_mib']:12.2f}x {r['resident_mib']:12.2f}x {r['tokens_per_s']:8.2f}x "
          f"{r['resident_gen_mib']:14.2f}x")
    print(json.dumps({"medians": med, "rounds": {m: [{k: v for k, v in r.items() if k != "sequence"} for r in rs]
                                                   for m, rs in runs.items()}}))


if __name__ == "__main__":
    main()
