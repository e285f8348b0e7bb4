"""Where a protected session's extra CPU time goes, per byte: `perf record` of session
creation, plain file against protected model, in fresh processes.

    python3 bench/session_profile.py PLAIN_MODEL PROTECTED_MODEL KEY_FILE [--runs N] [--freq HZ] [--json OUT]

Each run is one fresh Python process that imports onnxruntime and onnx_protect, then
creates a session (`onnxruntime.InferenceSession` of the plain file, or
`onnx_protect.InferenceSession` of the protected one, default options) under
`perf record -k CLOCK_MONOTONIC` (cpu-clock samples of every thread); only the samples
taken between the start and the end of the session's creation are counted (`perf report
--time`). Samples are sorted by symbol and shared object into the groups of GROUPS
(AES-CTR, BLAKE3, the encrypted file read from the page cache, page faults and page
installs, onnxruntime, Python, the rest), summed over the runs (plain and protected
interleaved), and given as CPU milliseconds per run and as nanoseconds per encrypted
byte of the protected model (`onnx_protect.inspect`). Needs `perf` (Debian: linux-perf)
and permission to use it (root, or kernel.perf_event_paranoid <= 1), and a wheel that keeps
its symbols (`scripts/build-wheel.sh --release --keep-symbols`): in the stripped one users
install, AES-CTR and BLAKE3 have no names and are counted under "other" (the script says so).
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import sys, time
import onnxruntime as ort
import onnx_protect
variant, model, key = sys.argv[1:4]
t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
if variant == "plain":
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
else:
    s = onnx_protect.InferenceSession(model, providers=["CPUExecutionProvider"], key_file=key)
t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
print(f"{t0:.6f} {t1:.6f}", flush=True)
"""

# (group, what a sample's "dso;symbol" matches), first match wins; checked in this order.
GROUPS = [
    ("AES-CTR", r"[Aa]es|aesni|ctr32|cipher::"),
    ("BLAKE3", r"blake3"),
    ("encrypted file read (page cache copy)", r"\[kernel[^;]*;.*(copy_to_iter|copy_page_to_iter|filemap_|copy_to_user)"),
    ("pages: faults, allocation, installs, their locks", r"\[kernel[^;]*;.*(page_fault|handle_mm|clear_page|memcg|mem_cgroup|mfill|move_pages|"
     r"anonymous_page|alloc|freelist|folio|pte|rmap|lru|list_del|copy_from_user|zap_|unmap|tlb|flush|charge|"
     r"free_pages|free_unref|madvise|userfault|uffd|spin_|mas_walk|lock_vma|rcu_read|access_error|percpu_counter|"
     r"page_state|lruvec)"),
    ("onnxruntime", r"onnxruntime"),
    ("Python", r"libpython|python3"),
    ("memcpy/memset (user)", r"libc[^;]*;.*mem(cpy|move|set)"),
    ("other kernel", r"\[kernel"),
    ("other", r""),
]


def profile(variant, model, key, freq):
    """CPU nanoseconds per group of one run's session creation."""
    with tempfile.TemporaryDirectory(prefix="session-profile-") as d:
        data = os.path.join(d, "perf.data")
        r = subprocess.run(["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", "cpu-clock", "-F", str(freq),
                            "-o", data, "--", sys.executable, "-c", CHILD, variant, model, key],
                           capture_output=True, text=True)
        if r.returncode:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"error: {model}: {variant} under perf record failed (exit {r.returncode}): {last}")
        t0, t1 = (float(x) for x in r.stdout.split()[-2:])
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                              "--sort", "dso,sym", "-F", "period,dso,sym", "--percent-limit", "0", "-t", ";",
                              "--time", f"{t0:.6f},{t1:.6f}"], capture_output=True, text=True, check=True).stdout
    groups = {g: 0 for g, _ in GROUPS}
    for line in rep.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        period, rest = line.split(";", 1)
        rest = re.sub(r"\s*;\s*", ";", rest.strip())
        g = next(g for g, rx in GROUPS if re.search(rx, rest))
        groups[g] += int(period)
    return groups, t1 - t0


def native_symbols(package):
    """Whether the package's native library names its functions (`nm` finds a symbol
    table; True when `nm` is missing, as nothing can be said)."""
    libs = glob.glob(os.path.join(os.path.dirname(package.__file__), "_native*.so"))
    try:
        out = subprocess.run(["nm", libs[0]], capture_output=True, text=True)
    except (OSError, IndexError):
        return True
    return out.returncode == 0 and bool(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plain")
    ap.add_argument("protected")
    ap.add_argument("key")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--freq", type=int, default=4000, help="samples per second and thread (default 4000)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.runs < 1:
        raise SystemExit("error: --runs must be at least 1")
    import onnx_protect

    if getattr(onnx_protect._native, "RELEASE_BUILD", True) is False:
        raise SystemExit("error: onnx_protect here is a debug build (scripts/test.sh installs one into the Python "
                         "it runs): install scripts/build-wheel.sh --release --keep-symbols's wheel")
    stripped = not native_symbols(onnx_protect)
    if stripped:
        print("note: onnx_protect's native library has no symbols (a stripped wheel): AES-CTR and BLAKE3 "
              "are counted under 'other'; build with scripts/build-wheel.sh --release --keep-symbols", file=sys.stderr)
    encrypted = (onnx_protect.inspect(a.protected).get("protection") or {}).get("encrypted_bytes", 0)
    if not encrypted:
        raise SystemExit(f"error: {a.protected}: no encrypted bytes")
    total = {v: {g: 0 for g, _ in GROUPS} for v in ("plain", "protected")}
    walls = {v: [] for v in total}
    load = [os.getloadavg()[0]]
    for i in range(a.runs + 1):
        for v in (("plain", "protected") if i % 2 else ("protected", "plain")):
            groups, wall = profile(v, a.plain if v == "plain" else a.protected, a.key, a.freq)
            if i == 0:
                continue  # warm-up: the page cache and the first imports
            walls[v].append(wall)
            for g, ns in groups.items():
                total[v][g] += ns
    load.append(os.getloadavg()[0])
    n = a.runs
    print(f"{a.protected}: {encrypted / 2**20:.1f} MiB encrypted; {n} runs each; load {load[0]:.1f}-{load[1]:.1f}")
    print(f"{'group':40} {'plain ms':>9} {'protected ms':>13} {'extra ms':>9} {'extra ns/B':>11}")
    rows = []
    for g, _ in GROUPS + [("total", None)]:
        p = sum(total["plain"].values()) if g == "total" else total["plain"][g]
        q = sum(total["protected"].values()) if g == "total" else total["protected"][g]
        extra = (q - p) / n
        rows.append({"group": g, "plain_ms": p / n / 1e6, "protected_ms": q / n / 1e6, "extra_ns_per_byte": extra / encrypted})
        print(f"{g:40} {p / n / 1e6:9.1f} {q / n / 1e6:13.1f} {extra / 1e6:9.1f} {extra / encrypted:11.3f}")
    med = {v: sorted(w)[len(w) // 2] for v, w in walls.items()}
    print(f"session creation (median wall): plain {med['plain']:.3f} s, protected {med['protected']:.3f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"protected": a.protected, "encrypted_bytes": encrypted, "runs": n, "load": load, "stripped": stripped,
                       "rows": rows, "wall_median": med, "time": time.time()}, f, indent=1)


if __name__ == "__main__":
    main()
