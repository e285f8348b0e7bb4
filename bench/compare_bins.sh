#!/usr/bin/env bash
# A/B of onnx-protect builds on the single-file model: interleaved rounds of
# encrypt (default policy, *=1 and *=0.05) and decrypt (default and *=0.05), plus
# cp as a yardstick.
#
#   bench/compare_bins.sh [-n RUNS] [-d DATA_DIR] NAME=BINARY [NAME=BINARY ...]
#
# Each (binary, case) runs RUNS+1 times, round-robin; the first round is a warm-up
# and is dropped. Prints median wall seconds, median user+sys CPU seconds and the
# median steal (vCPU time the hypervisor took during a run). The
# decrypt input is the default-policy model written by the first binary, so every
# build must read the same format (a check that a candidate stays compatible).
set -euo pipefail
N=5
DATA=$(cd "$(dirname "$0")/.." && pwd)/bench-data
while getopts "n:d:" opt; do
    case $opt in
        n) N=$OPTARG ;;
        d) DATA=$OPTARG ;;
        *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,10p' "$0"; exit 2; }
S=$DATA/single/model.onnx
KEY=$DATA/bench.key
OUT=$DATA/out/ab
RES=$DATA/ab-$(date +%Y%m%d-%H%M%S).tsv
mkdir -p "$OUT"
first_bin=${1#*=}
[ -f "$KEY" ] || "$first_bin" keygen -o "$KEY" >/dev/null
rm -rf "$OUT/encin"
"$first_bin" encrypt "$S" -o "$OUT/encin/model.onnx" --key-file "$KEY" -q >/dev/null
rm -rf "$OUT/encin05"
"$first_bin" encrypt "$S" -o "$OUT/encin05/model.onnx" --key-file "$KEY" -q --coefficient '*=0.05' >/dev/null

# Steal: vCPU time the hypervisor took during the run (see bench/run.sh).
TICKS=$(getconf CLK_TCK)
steal_ticks() { awk '/^cpu /{print $9}' /proc/stat; }
printf 'bin\tcase\tround\twall_s\tcpu_s\tload1\tsteal_s\n' >"$RES"
for ((r = 0; r <= N; r++)); do
    for c in cp enc_default enc_c1 enc_c005 dec_default dec_c005; do
        for nb in "$@"; do
            name=${nb%%=*}
            bin=${nb#*=}
            [ "$c" = cp ] && [ "$nb" != "$1" ] && continue
            o=$OUT/o
            case $c in
                cp) cmd=(cp "$S" "$o"); name=cp ;;
                enc_default) cmd=("$bin" encrypt "$S" -o "$o/model.onnx" --key-file "$KEY" -q) ;;
                enc_c1) cmd=("$bin" encrypt "$S" -o "$o/model.onnx" --key-file "$KEY" -q --coefficient '*=1') ;;
                enc_c005) cmd=("$bin" encrypt "$S" -o "$o/model.onnx" --key-file "$KEY" -q --coefficient '*=0.05') ;;
                dec_default) cmd=("$bin" decrypt "$OUT/encin/model.onnx" -o "$o/model.onnx" --key-file "$KEY" -q) ;;
                dec_c005) cmd=("$bin" decrypt "$OUT/encin05/model.onnx" -o "$o/model.onnx" --key-file "$KEY" -q) ;;
            esac
            rm -rf "$o"
            sync
            l=$(cut -d' ' -f1 /proc/loadavg)
            st0=$(steal_ticks)
            t0=$(date +%s%N)
            /usr/bin/time -f '%U %S' -o "$OUT/t" "${cmd[@]}" >/dev/null
            t1=$(date +%s%N)
            st1=$(steal_ticks)
            if [[ $c == dec_* ]] && ! cmp -s "$o/model.onnx" "$S"; then
                echo "$name: decrypt is not byte-exact" >&2
                exit 1
            fi
            read -r u s <"$OUT/t"
            printf '%s\t%s\t%d\t%.3f\t%.2f\t%s\t%.2f\n' "$name" "$c" "$r" "$(echo "($t1 - $t0) / 1000000000" | bc -l)" \
                "$(echo "$u + $s" | bc -l)" "$l" "$(echo "($st1 - $st0) / $TICKS" | bc -l)" >>"$RES"
            rm -rf "$o"
        done
    done
done
python3 - "$RES" <<'EOF'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["round"] != "0"]
keys = []
for r in rows:
    if (r["bin"], r["case"]) not in keys:
        keys.append((r["bin"], r["case"]))
print(f"{'build':<12} {'case':<12} {'median wall s':>13} {'median cpu s':>12} {'median load1':>12} {'median steal s':>14}")
for b, c in keys:
    rs = [r for r in rows if r["bin"] == b and r["case"] == c]
    print(f"{b:<12} {c:<12} {statistics.median(float(r['wall_s']) for r in rs):13.2f} "
          f"{statistics.median(float(r['cpu_s']) for r in rs):12.2f} {statistics.median(float(r['load1']) for r in rs):12.2f} "
          f"{statistics.median(float(r['steal_s']) for r in rs):14.2f}")
EOF
echo "raw: $RES"
