#!/usr/bin/env bash
# Time of `rewrap` against `cp` of the same file (docs/performance.md, "rewrap").
#
#   bench/rewrap.sh [-n RUNS] [MODEL...]
#
# Default models: fixtures/models/cnn_torch/model.onnx and the 1 GiB bench model
# bench-data/single/model.onnx. Every model is first copied to a temporary
# directory (the original is never modified) and, if it is not protected yet,
# encrypted there with a fresh key. Then, in RUNS+1 interleaved rounds (the first is a
# warm-up and dropped), each round times, per model:
#   cp           cp of the protected model to a new file
#   rewrap -o    rewrap adding (or removing) a recipient, written to a new file
#   in-place     rewrap --in-place adding (or removing) a recipient
# Rounds alternate adding and removing the same recipient, so the file keeps its size.
# Outputs are removed and `sync` run before each timed command, outside the timing.
# Prints the medians (seconds) and the machine facts. Needs a release build.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
N=7
while getopts "n:h" opt; do
    case $opt in
        n) N=$OPTARG ;;
        *) sed -n '2,17p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=("$REPO/fixtures/models/cnn_torch/model.onnx" "$REPO/bench-data/single/model.onnx")
BIN=${BIN:-$REPO/target/release/onnx-protect}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p onnx-protect" >&2; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/rewrap-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

echo "command   bench/rewrap.sh -n $N ${*:-}"
echo "commit    $(git -C "$REPO" rev-parse --short HEAD)"
echo "cpu       $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "kernel    $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "disk      $(df -h "$TMP" | awk 'NR==2{print $1", "$4" free"}')"

"$BIN" keygen -q -o "$TMP/owner.key"
"$BIN" keygen -q -o "$TMP/extra.key"
declare -a PROT
for i in "${!MODELS[@]}"; do
    m=${MODELS[$i]}
    cp "$m" "$TMP/src$i.onnx"
    if "$BIN" verify -q "$TMP/src$i.onnx" >/dev/null 2>&1; then
        echo "model $i   $m (protected; rewrap opens it with \$OWNER_KEY)" >&2
        PROT[$i]=$TMP/src$i.onnx
    else
        "$BIN" encrypt -q "$TMP/src$i.onnx" -o "$TMP/m$i.onnx" --key-file "$TMP/owner.key"
        rm "$TMP/src$i.onnx"
        PROT[$i]=$TMP/m$i.onnx
    fi
done
KEY=${OWNER_KEY:-$TMP/owner.key}

now() { date +%s.%N; }
timed() { # prints the seconds "$@" took
    local t0 t1
    t0=$(now)
    "$@" >/dev/null
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}
RAW=$TMP/raw.tsv
for r in $(seq 0 "$N"); do
    if [ $((r % 2)) -eq 0 ]; then change=(--add-key-file "$TMP/extra.key"); else change=(--remove-key-file "$TMP/extra.key"); fi
    for i in "${!MODELS[@]}"; do
        p=${PROT[$i]}
        rm -f "$TMP/cp.onnx" "$TMP/out.onnx"; sync
        t=$(timed cp "$p" "$TMP/cp.onnx"); echo -e "$r\t$i\tcp\t$t" >>"$RAW"
        rm -f "$TMP/cp.onnx"; sync
        t=$(timed "$BIN" rewrap -q "$p" -o "$TMP/out.onnx" --key-file "$KEY" "${change[@]}")
        echo -e "$r\t$i\trewrap -o\t$t" >>"$RAW"
        rm -f "$TMP/out.onnx"; sync
        t=$(timed "$BIN" rewrap -q --in-place "$p" --key-file "$KEY" "${change[@]}")
        echo -e "$r\t$i\tin-place\t$t" >>"$RAW"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-60s %12s %10s %10s %10s\n' model bytes cp "rewrap -o" in-place
for i in "${!MODELS[@]}"; do
    med() { awk -F'\t' -v i="$i" -v c="$1" '$1 > 0 && $2 == i && $3 == c {print $4}' "$RAW" | sort -g |
        awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
    printf '%-60s %12s %10.4f %10.4f %10.4f\n' "${MODELS[$i]}" "$(stat -c %s "${PROT[$i]}")" "$(med cp)" "$(med 'rewrap -o')" "$(med in-place)"
done
