#!/usr/bin/env python3
"""onnxruntime-genai: resident memory over a long generation, plain folder against protected.

    python3 bench/genai_resident.py PLAIN_DIR PROTECTED_DIR --key-file KEY [--tokens 200]

For each folder, in a fresh Python process: the model loaded (`og.Model` or
`onnx_protect.genai.Model`), then three prompts each continued by `--tokens` sampled tokens
(`top_k` 50, temperature 1, seed 1); prints resident memory (VmRSS) after the load and after
each prompt, and how many distinct tokens each sequence holds. Sampling reads rows spread over
the embedding table, the case the table cap of the on-demand region is for (docs/runtime.md).
"""
import argparse
import subprocess
import sys

CHILD = r"""
import sys
import onnxruntime_genai as og
mode, folder, key, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "protected":
    import onnx_protect.genai as opg
m = og.Model(folder) if mode == "plain" else opg.Model(folder, key_file=key)
def vmrss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) // 1024
out = [f"{mode:9} after the load {vmrss()} MiB"]
tok = og.Tokenizer(m)
for prompt in ["the cat sat on the mat and", "a quick brown fox jumps over", "once upon a time there was"]:
    p = og.GeneratorParams(m)
    ids = tok.encode(prompt)
    p.set_search_options(do_sample=True, top_k=50, temperature=1.0, max_length=len(ids) + tokens, random_seed=1)
    g = og.Generator(m, p)
    g.append_tokens(ids)
    while not g.is_done():
        g.generate_next_token()
    out.append(f"{len(set(g.get_sequence(0)))} distinct tokens: {vmrss()} MiB")
print(", ".join(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plain")
    ap.add_argument("protected")
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--tokens", type=int, default=200)
    a = ap.parse_args()
    for mode, folder in (("plain", a.plain), ("protected", a.protected)):
        r = subprocess.run([sys.executable, "-c", CHILD, mode, folder, a.key_file, str(a.tokens)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{mode} run failed: {r.stderr.strip()[-400:]}")
        print(r.stdout.strip())


if __name__ == "__main__":
    main()
