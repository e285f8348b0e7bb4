#!/usr/bin/env bash
# File-to-file at scale: encrypt, verify, decrypt and rewrap of external-data models of
# different sizes beside `cp` of the same files, time per GiB and peak RSS.
#
#   bench/scale.sh [-n RUNS] MODEL_DIR...
#
# Each MODEL_DIR holds model.onnx and its data files (bench/make_session_models.py:
# bench-data/session-models/llm_2g/external, llm_8g/external). A key is made in a
# temporary folder beside the outputs (OUT, default bench-data/scale-out). In RUNS+1
# rounds (the first a warm-up, dropped), each round runs per model, in this order, each
# after its previous output is removed and `sync`, outside the timing:
#   cp        cp -r of the plain folder
#   encrypt   encrypt MODEL_DIR/model.onnx -o OUT/enc/model.onnx (built-in policy)
#   verify    verify of that output
#   decrypt   decrypt of it to OUT/dec
#   rewrap    rewrap of it adding a recipient, to OUT/rw
# Wall time, CPU time (user + system) and peak RSS from /usr/bin/time -v. Prints medians,
# seconds per GiB of the model's bytes (wall, then CPU), and the machine's load before and
# after. Needs a release build.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
N=3
OUT=${OUT:-$REPO/bench-data/scale-out}
while getopts "n:h" opt; do
    case $opt in
        n) N=$OPTARG ;;
        *) sed -n '2,18p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { sed -n '2,18p' "$0"; exit 2; }
BIN=${BIN:-$REPO/target/release/onnx-protect}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p onnx-protect" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "no /usr/bin/time: apt-get install -y time" >&2; exit 1; }
mkdir -p "$OUT"
KEY=$OUT/k.key
OTHER=$OUT/other.key
[ -f "$KEY" ] || "$BIN" keygen -o "$KEY" -q
[ -f "$OTHER" ] || "$BIN" keygen -o "$OTHER" -q
RAW=$OUT/raw.tsv
: > "$RAW"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

timed() { # round model case command...
    local round=$1 model=$2 case=$3; shift 3
    sync
    local t0 t1 log=$OUT/time.log
    t0=$(date +%s.%N)
    /usr/bin/time -v "$@" > /dev/null 2> "$log" || { cat "$log" >&2; exit 1; }
    t1=$(date +%s.%N)
    local rss cpu
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$log")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$model" "$case" "$(echo "$t1 - $t0" | bc -l)" "$rss" "$cpu" >> "$RAW"
}

for r in $(seq 0 "$N"); do
    for m in "$@"; do
        name=$(basename "$(dirname "$m")")
        rm -rf "$OUT/cp" "$OUT/enc" "$OUT/dec" "$OUT/rw"
        timed "$r" "$name" cp cp -r "$m" "$OUT/cp"
        rm -rf "$OUT/cp"
        mkdir -p "$OUT/enc" "$OUT/dec" "$OUT/rw"
        timed "$r" "$name" encrypt "$BIN" encrypt "$m/model.onnx" -o "$OUT/enc/model.onnx" --key-file "$KEY" -q
        timed "$r" "$name" verify "$BIN" verify "$OUT/enc/model.onnx" --key-file "$KEY" -q
        timed "$r" "$name" decrypt "$BIN" decrypt "$OUT/enc/model.onnx" -o "$OUT/dec/model.onnx" --key-file "$KEY" -q
        if [ "$r" = 1 ]; then  # once: the decryption is the original, byte for byte
            for f in "$m"/*; do cmp -s "$f" "$OUT/dec/$(basename "$f")" || { echo "decrypt differs: $f" >&2; exit 1; }; done
        fi
        rm -rf "$OUT/dec"
        timed "$r" "$name" rewrap "$BIN" rewrap "$OUT/enc/model.onnx" -o "$OUT/rw/model.onnx" --key-file "$KEY" \
            --add-key-file "$OTHER" -q
        rm -rf "$OUT/rw"
    done
done
rm -rf "$OUT/enc"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RAW" "$@" <<'PY'
import os, statistics, sys
raw, dirs = sys.argv[1], sys.argv[2:]
size = {os.path.basename(os.path.dirname(d)): sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) for d in dirs}
rows = [l.rstrip("\n").split("\t") for l in open(raw)]
cases = ["cp", "encrypt", "verify", "decrypt", "rewrap"]
print(f"{'model':10} {'GiB':>6} " + " ".join(f"{c + ' s/GiB':>16}" for c in cases) + "   peak RSS MiB (" + ", ".join(cases[1:]) + ")")
for m in size:
    gib = size[m] / 2**30
    med = {c: statistics.median(float(r[3]) for r in rows if r[0] != "0" and r[1] == m and r[2] == c) for c in cases}
    rss = {c: max(int(r[4]) for r in rows if r[0] != "0" and r[1] == m and r[2] == c) / 1024 for c in cases}
    cpu = {c: statistics.median(float(r[5]) for r in rows if r[0] != "0" and r[1] == m and r[2] == c) for c in cases}
    print(f"{m:10} {gib:6.2f} " + " ".join(f"{med[c] / gib:16.3f}" for c in cases)
          + "   " + ", ".join(f"{rss[c]:.0f}" for c in cases[1:]))
    print(f"{'  CPU':10} {'':6} " + " ".join(f"{cpu[c] / gib:16.3f}" for c in cases))
PY
