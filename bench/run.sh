#!/usr/bin/env bash
# Benchmark of onnx-protect encrypt/decrypt against cp, openssl and a Python baseline.
#
#   bench/run.sh [-n RUNS] [-d DATA_DIR] [-o single|external] [-c CASE_REGEX]
#
# Needs the models of bench/make_models.py in DATA_DIR (default bench-data in the checkout)
# and a release build (cargo build --release). Every case runs RUNS+1 times; the
# first run is a warm-up and is dropped (the page cache stays warm: nothing is
# dropped from it). Cases are interleaved in rounds (round r runs every case once)
# so a change of machine load during the run hits all of them alike. Before each
# run the case's output is removed and `sync` flushes dirty pages, outside the
# timing. Wall time is taken around `/usr/bin/time -v`, which gives the peak RSS
# and the CPU time. After the rounds: decrypted outputs are compared byte for byte
# with the originals, and one untimed run per onnx-protect case splits the peak
# RSS into anonymous and file-backed (mmap) pages (bench/rss_sample.py).
# Results: DATA_DIR/results-<time>/ (raw.tsv, summary.txt, machine.txt, load.log).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
N=5
DATA=$REPO/bench-data
ONLY=""
CASES=""
while getopts "n:d:o:c:h" opt; do
    case $opt in
        n) N=$OPTARG ;;
        d) DATA=$OPTARG ;;
        o) ONLY=$OPTARG ;;
        c) CASES=$OPTARG ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
BIN=${BIN:-$REPO/target/release/onnx-protect}
# In-memory decryption with full verification (every byte hashed, MAC checked), then
# the plaintext wiped: crates/core/examples/decrypt_in_memory.rs.
MEM=${MEM:-$REPO/target/release/examples/decrypt_in_memory}
PY=${PYTHON:-python3}
S=$DATA/single/model.onnx
E=$DATA/external
OUT=$DATA/out
PREP=$DATA/prep
RES=$DATA/results-$(date +%Y%m%d-%H%M%S)
KEY=$DATA/bench.key
OSSL_K=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
OSSL_IV=00000000000000000000000000000000
# The "default" cases encrypt half of every weight's rows in ctr mode (`*=0.5`), the
# reference point kept whatever the built-in policy is; the "builtin" cases pass no
# policy option (the built-in policy of the build under test).
HALF=(--coefficient '*=0.5' --mode '*=ctr')
# The "lf" cases: the first and the last layer whole (the built-in policy before every
# weight was encrypted by default).
LF=(--coefficient '*=0' --coefficient layer:first=1 --coefficient layer:last=1)

[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release" >&2; exit 1; }
[ -x "$MEM" ] || { echo "no $MEM: run cargo build --release -p onnx-protect-core --example decrypt_in_memory" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "no /usr/bin/time: apt-get install -y time" >&2; exit 1; }
mkdir -p "$RES" "$OUT" "$PREP"

# ---- machine facts -------------------------------------------------------
{
    echo "date        $(date -Is)"
    echo "command     $0 $*  (N=$N)"
    echo "repo        $(git -C "$REPO" rev-parse --short HEAD) ($(git -C "$REPO" status --porcelain -- crates src | wc -l) modified files under crates/ src/)"
    echo "binary      $BIN ($(stat -c %y "$BIN"))"
    echo "nproc       $(nproc)"
    echo "cpu         $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "cpu flags   aes=$(grep -qw aes /proc/cpuinfo && echo yes || echo no) sha_ni=$(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no) avx2=$(grep -qw avx2 /proc/cpuinfo && echo yes || echo no) vaes=$(grep -qw vaes /proc/cpuinfo && echo yes || echo no)"
    echo "memory      $(free -g | awk '/Mem:/{print $2" GiB total, "$7" GiB available"}')"
    echo "kernel      $(uname -r)"
    echo "disk        $(df -h "$DATA" | awk 'NR==2{print $1", "$4" free of "$2}')"
    echo "openssl     $(openssl version)"
    echo "python      $($PY -c 'import sys,onnx,numpy; print(sys.version.split()[0], "onnx", onnx.__version__, "numpy", numpy.__version__)')"
    echo "cryptography $($PY -c 'import cryptography; print(cryptography.__version__)' 2>/dev/null || echo none)"
    echo "load at start $(cat /proc/loadavg)"
} | tee "$RES/machine.txt"

# load average every 5 s during the whole run
( while true; do echo "$(date +%s) $(cat /proc/loadavg)"; sleep 5; done ) >"$RES/load.log" &
LOADPID=$!
trap 'kill $LOADPID 2>/dev/null || true' EXIT

[ -f "$KEY" ] || "$BIN" keygen -o "$KEY" >/dev/null

# ---- cases ----------------------------------------------------------------
# case_cmd LABEL sets CMD (the command) and O (its output, removed before each run).
case_cmd() {
    O=$OUT/$1
    case $1 in
        s_cp)             CMD=(cp "$S" "$O") ;;
        s_cp_sync)        CMD=(sh -c 'cp "$0" "$1" && sync "$1"' "$S" "$O") ;;
        s_openssl)        CMD=(openssl enc -aes-256-ctr -K $OSSL_K -iv $OSSL_IV -in "$S" -out "$O") ;;
        s_enc_default)    CMD=("$BIN" encrypt "$S" -o "$O/model.onnx" --key-file "$KEY" -q "${HALF[@]}") ;;
        s_enc_c0.05)      CMD=("$BIN" encrypt "$S" -o "$O/model.onnx" --key-file "$KEY" -q --coefficient '*=0.05') ;;
        s_enc_c1)         CMD=("$BIN" encrypt "$S" -o "$O/model.onnx" --key-file "$KEY" -q --coefficient '*=1') ;;
        s_enc_sync)       CMD=("$BIN" encrypt "$S" -o "$O/model.onnx" --key-file "$KEY" -q --sync "${HALF[@]}") ;;
        s_dec_default)    CMD=("$BIN" decrypt "$PREP/s_default/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q) ;;
        s_enc_builtin)    CMD=("$BIN" encrypt "$S" -o "$O/model.onnx" --key-file "$KEY" -q) ;;
        s_dec_builtin)    CMD=("$BIN" decrypt "$PREP/s_builtin/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q) ;;
        s_mem_builtin)    CMD=("$MEM" "$PREP/s_builtin/model.onnx" "$KEY" 1) ;;
        s_enc_lf)         CMD=("$BIN" encrypt "$S" -o "$O/model.onnx" --key-file "$KEY" -q "${LF[@]}") ;;
        s_dec_lf)         CMD=("$BIN" decrypt "$PREP/s_lf/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q) ;;
        s_mem_lf)         CMD=("$MEM" "$PREP/s_lf/model.onnx" "$KEY" 1) ;;
        s_dec_sync)       CMD=("$BIN" decrypt "$PREP/s_default/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q --sync) ;;
        s_dec_c0.05)      CMD=("$BIN" decrypt "$PREP/s_c0.05/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q) ;;
        s_dec_c1)         CMD=("$BIN" decrypt "$PREP/s_c1/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q) ;;
        s_cat)            CMD=(sh -c 'cat "$0" > /dev/null' "$S") ;;
        s_b3sum)          CMD=(b3sum "$S") ;;
        s_mem_default)    CMD=("$MEM" "$PREP/s_default/model.onnx" "$KEY" 1) ;;
        s_python)         CMD=("$PY" "$REPO/bench/python_baseline.py" "$S" "$O" --coefficient 0.5 --mode ctr) ;;
        e_cp)             CMD=(cp -r "$E" "$O") ;;
        e_cp_sync)        CMD=(sh -c 'cp -r "$0" "$1" && sync "$1"/*' "$E" "$O") ;;
        e_enc_default)    CMD=("$BIN" encrypt "$E/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q "${HALF[@]}") ;;
        e_enc_c1)         CMD=("$BIN" encrypt "$E/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q --coefficient '*=1') ;;
        e_enc_sync)       CMD=("$BIN" encrypt "$E/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q --sync "${HALF[@]}") ;;
        e_dec_default)    CMD=("$BIN" decrypt "$PREP/e_default/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q) ;;
        e_dec_sync)       CMD=("$BIN" decrypt "$PREP/e_default/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q --sync) ;;
        e_cat)            CMD=(sh -c 'cat "$0"/* > /dev/null' "$E") ;;
        e_b3sum)          CMD=(sh -c 'b3sum "$0"/* > /dev/null' "$E") ;;
        e_mem_default)    CMD=("$MEM" "$PREP/e_default/model.onnx" "$KEY" 1) ;;
        e_dec_c1)         CMD=("$BIN" decrypt "$PREP/e_c1/model.onnx" -o "$O/model.onnx" --key-file "$KEY" -q) ;;
        *) echo "unknown case $1" >&2; exit 1 ;;
    esac
}

SINGLE_CASES="s_cp s_cp_sync s_openssl s_cat s_b3sum s_enc_default s_enc_sync s_enc_c0.05 s_enc_c1 s_dec_default s_dec_sync s_dec_c0.05 s_dec_c1 s_mem_default s_enc_builtin s_dec_builtin s_mem_builtin s_enc_lf s_dec_lf s_mem_lf s_python"
EXT_CASES="e_cp e_cp_sync e_cat e_b3sum e_enc_default e_enc_sync e_enc_c1 e_dec_default e_dec_sync e_dec_c1 e_mem_default"
ALL=""
if [ "$ONLY" != external ]; then
    [ -f "$S" ] || { echo "no $S: run bench/make_models.py" >&2; exit 1; }
    ALL="$ALL $SINGLE_CASES"
fi
if [ "$ONLY" != single ]; then
    [ -f "$E/model.onnx" ] || { echo "no $E/model.onnx: run bench/make_models.py" >&2; exit 1; }
    ALL="$ALL $EXT_CASES"
fi
# b3sum (`cargo install b3sum`): reading the model once and hashing it with BLAKE3 on
# every core, the yardstick of in-memory decryption with full verification.
if ! command -v b3sum >/dev/null; then
    echo "no b3sum on PATH (cargo install b3sum): its cases are left out" >&2
    ALL=$(for c in $ALL; do echo "$c"; done | grep -v b3sum | tr '\n' ' ')
fi
if [ -n "$CASES" ]; then
    ALL=$(for c in $ALL; do echo "$c"; done | grep -E "$CASES" | tr '\n' ' ' || true)
fi

# ---- encrypted inputs for the decrypt cases (untimed) ------------------------
prep() { # NAME INPUT COEFF
    local d=$PREP/$1
    if [ ! -f "$d/model.onnx" ] || [ "$d/model.onnx" -ot "$BIN" ] || [ "$d/model.onnx" -ot "$2" ]; then
        rm -rf "$d"
        if [ "$3" = default ]; then
            "$BIN" encrypt "$2" -o "$d/model.onnx" --key-file "$KEY" -q "${HALF[@]}" >/dev/null
        elif [ "$3" = builtin ]; then
            "$BIN" encrypt "$2" -o "$d/model.onnx" --key-file "$KEY" -q >/dev/null
        elif [ "$3" = lf ]; then
            "$BIN" encrypt "$2" -o "$d/model.onnx" --key-file "$KEY" -q "${LF[@]}" >/dev/null
        else
            "$BIN" encrypt "$2" -o "$d/model.onnx" --key-file "$KEY" -q --coefficient "*=$3" >/dev/null
        fi
    fi
}
for c in $ALL; do
    case $c in
        s_dec_default|s_dec_sync|s_mem_default) prep s_default "$S" default ;;
        s_dec_builtin|s_mem_builtin) prep s_builtin "$S" builtin ;;
        s_dec_lf|s_mem_lf) prep s_lf "$S" lf ;;
        s_dec_c0.05) prep s_c0.05 "$S" 0.05 ;;
        s_dec_c1) prep s_c1 "$S" 1 ;;
        e_dec_default|e_dec_sync|e_mem_default) prep e_default "$E/model.onnx" default ;;
        e_dec_c1) prep e_c1 "$E/model.onnx" 1 ;;
    esac
done

# byte-exact check of a decrypt output against the original
check_dec() { # LABEL OUTPUT
    case $1 in
        s_dec_*) cmp -s "$2/model.onnx" "$S" ;;
        e_dec_*) for f in "$E"/*; do cmp -s "$f" "$2/$(basename "$f")" || return 1; done ;;
    esac
}

# ---- timed rounds ------------------------------------------------------------
# Steal: time the hypervisor ran something else while one of this VM's vCPUs wanted
# to run (the 8th number of the `cpu` line of /proc/stat, summed over the vCPUs, in
# clock ticks). On a shared host it grows when both vCPUs are busy, so it is recorded
# per run: a multi-threaded case can lose to `cp` for reasons outside the process.
TICKS=$(getconf CLK_TCK)
steal_ticks() { awk '/^cpu /{print $9}' /proc/stat; }
printf 'case\tround\twall_us\tmaxrss_kib\tuser_s\tsys_s\tload1\tsteal_ms\n' >"$RES/raw.tsv"
: >"$RES/checks.txt"
echo "cases: $ALL"
for ((r = 0; r <= N; r++)); do
    for c in $ALL; do
        case_cmd "$c"
        rm -rf "$O"
        sync
        load1=$(cut -d' ' -f1 /proc/loadavg)
        st0=$(steal_ticks)
        t0=$(date +%s%N)
        if ! /usr/bin/time -v -o "$RES/time.tmp" "${CMD[@]}" >/dev/null 2>"$RES/stderr.tmp"; then
            echo "FAILED: ${CMD[*]}" >&2
            cat "$RES/stderr.tmp" "$RES/time.tmp" >&2
            exit 1
        fi
        t1=$(date +%s%N)
        st1=$(steal_ticks)
        steal_ms=$(((st1 - st0) * 1000 / TICKS))
        rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$RES/time.tmp")
        usr=$(awk -F': ' '/User time/{print $2}' "$RES/time.tmp")
        sys=$(awk -F': ' '/System time/{print $2}' "$RES/time.tmp")
        printf '%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n' "$c" "$r" $(((t1 - t0) / 1000)) "$rss" "$usr" "$sys" "$load1" "$steal_ms" >>"$RES/raw.tsv"
        printf 'round %d %-15s %7.2f s  %8d KiB  load %s  steal %d ms\n' "$r" "$c" "$(echo "($t1 - $t0) / 1000000000" | bc -l)" "$rss" "$load1" "$steal_ms"
        if [ "$r" = "$N" ] && [[ $c == ?_dec_* ]]; then
            if check_dec "$c" "$O"; then echo "$c byte-exact: yes" >>"$RES/checks.txt"; else echo "$c byte-exact: NO" >>"$RES/checks.txt"; fi
        fi
        rm -rf "$O"
    done
done

# ---- RSS split (one untimed run per onnx-protect case) ---------------------------
: >"$RES/rss_split.tsv"
for c in $ALL; do
    case $c in ?_enc_*|?_dec_*|?_mem_*) ;; *) continue ;; esac
    case_cmd "$c"
    rm -rf "$O"
    sync
    line=$("$PY" "$REPO/bench/rss_sample.py" -- "${CMD[@]}" 2>/dev/null | tail -n1)
    printf '%s\t%s\n' "$c" "$line" >>"$RES/rss_split.tsv"
    rm -rf "$O"
done
echo "load at end $(cat /proc/loadavg)" | tee -a "$RES/machine.txt"
kill $LOADPID 2>/dev/null || true

# ---- summary ----------------------------------------------------------------------
S_BYTES=$([ -f "$S" ] && stat -c %s "$S" || echo 0)
E_BYTES=$([ -d "$E" ] && du -sb "$E" | cut -f1 || echo 0)
"$PY" - "$RES" "$S_BYTES" "$E_BYTES" <<'EOF' | tee "$RES/summary.txt"
import csv, json, statistics, sys
res, s_bytes, e_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = list(csv.DictReader(open(f"{res}/raw.tsv"), delimiter="\t"))
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
med = {}
stats = {}
for c in cases:
    rs = [r for r in rows if r["case"] == c and r["round"] != "0"]
    w = [int(r["wall_us"]) / 1e6 for r in rs]
    rss = [int(r["maxrss_kib"]) for r in rs]
    cpu = [float(r["user_s"]) + float(r["sys_s"]) for r in rs]
    ld = [float(r["load1"]) for r in rs]
    steal = [int(r.get("steal_ms") or 0) / 1e3 for r in rs]
    med[c] = statistics.median(w)
    stats[c] = dict(n=len(w), med=med[c], lo=min(w), hi=max(w), rss=max(rss), cpu=statistics.median(cpu),
                    load=statistics.median(ld), steal=statistics.median(steal))
split = {}
try:
    for line in open(f"{res}/rss_split.tsv"):
        c, js = line.rstrip("\n").split("\t", 1)
        split[c] = json.loads(js)
except (FileNotFoundError, ValueError):
    pass
MiB = 1 << 20
names = {
    "cp": "cp", "cp_sync": "cp + sync (fsync)", "openssl": "openssl enc -aes-256-ctr (whole file)",
    "enc_default": "onnx-protect encrypt (*=0.5, ctr)",
    "enc_sync": "onnx-protect encrypt --sync (durable)", "dec_sync": "onnx-protect decrypt --sync (durable)", "enc_c0.05": "onnx-protect encrypt *=0.05",
    "enc_c1": "onnx-protect encrypt *=1", "dec_default": "onnx-protect decrypt (*=0.5, ctr)",
    "dec_c0.05": "onnx-protect decrypt *=0.05", "dec_c1": "onnx-protect decrypt *=1",
    "python": "python onnx.load + XOR + onnx.save (0.5, ctr)",
    "cat": "cat > /dev/null (read once, page cache)",
    "b3sum": "b3sum (read once + BLAKE3, all cores)",
    "mem_default": "in-memory decrypt + full verify (*=0.5)",
    "enc_builtin": "onnx-protect encrypt (built-in policy)",
    "dec_builtin": "onnx-protect decrypt (built-in policy)",
    "mem_builtin": "in-memory decrypt + full verify (built-in)",
    "enc_lf": "onnx-protect encrypt (last+first)",
    "dec_lf": "onnx-protect decrypt (last+first)",
    "mem_lf": "in-memory decrypt + full verify (last+first)",
}
for g, size, title in (("s", s_bytes, "single-file model"), ("e", e_bytes, "external-data model (folder)")):
    gc = [c for c in cases if c.startswith(g + "_")]
    if not gc:
        continue
    cp = med.get(f"{g}_cp")
    cps = med.get(f"{g}_cp_sync")
    print(f"\n== {title}: {size} bytes ({size / MiB:.0f} MiB); median of {stats[gc[0]]['n']} runs (warm-up dropped) ==")
    hdr = f"{'command':<46} {'median s':>8} {'min-max s':>13} {'MB/s':>6} {'x cp':>6} {'x cp+sync':>9} {'cpu s':>6} {'peak RSS MiB':>12} {'RSS/size':>8} {'anon MiB':>8} {'load1':>5} {'steal s':>7}"
    print(hdr)
    print("-" * len(hdr))
    for c in gc:
        st = stats[c]
        name = names.get(c[2:], c[2:])
        if g == "e":
            name = name.replace("cp", "cp -r", 1) if c[2:].startswith("cp") else name
        anon = split.get(c, {}).get("RssAnon_kib")
        print(f"{name:<46} {st['med']:8.2f} {st['lo']:6.2f}-{st['hi']:<6.2f} {size / st['med'] / 1e6:6.0f} "
              f"{st['med'] / cp if cp else float('nan'):6.2f} {st['med'] / cps if cps else float('nan'):9.2f} "
              f"{st['cpu']:6.2f} {st['rss'] / 1024:12.0f} {st['rss'] * 1024 / size:8.3f} "
              f"{(anon / 1024) if anon is not None else float('nan'):8.0f} {st['load']:5.2f} {st['steal']:7.2f}")
    for pol in ("default", "builtin", "lf"):
        for base in ("cat", "b3sum"):
            if f"{g}_{base}" in med and f"{g}_mem_{pol}" in med:
                print(f"in-memory decrypt ({pol}) / {base} = {med[f'{g}_mem_{pol}'] / med[f'{g}_{base}']:.2f}x")
    if f"{g}_python" in med and f"{g}_enc_default" in med:
        print(f"python / encrypt(default) = {med[f'{g}_python'] / med[f'{g}_enc_default']:.2f}x")
print("\nx cp = median / median of cp (cp -r for the folder); MB/s = model bytes / median wall time;"
      "\ncpu s = median user+sys CPU seconds; peak RSS = max over the timed runs of /usr/bin/time -v;"
      "\nanon MiB = peak RssAnon of one extra sampled run (the rest of the RSS is file-backed mmap pages);"
      "\nload1 = median 1-minute load average at the start of the runs;"
      "\nsteal s = median vCPU time taken by the hypervisor during a run, summed over the vCPUs (/proc/stat).")
EOF
cat "$RES/checks.txt"
awk '{print $2}' "$RES/load.log" | sort -n | awk '{a[NR]=$1; s+=$1} END {if (NR) printf "load1 during run: min %.2f, median %.2f, max %.2f (%d samples every 5 s)\n", a[1], a[int((NR+1)/2)], a[NR], NR}' | tee -a "$RES/summary.txt"
echo "results in $RES"
