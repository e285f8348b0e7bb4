#!/usr/bin/env bash
# Many small models in one process: `batch encrypt` and `batch decrypt` of a folder of
# COUNT copies of the fixture models (fixtures/models/*, external-data one left out),
# side by side with `cp -r` of the same folder, for one or more builds.
#
#   bench/batch_small.sh [-n RUNS] [-c COUNT] [-w DIR] NAME=BINARY [NAME=BINARY ...]
#
# Each (binary, case) runs RUNS+1 times in interleaved rounds; the first round is a
# warm-up and is dropped. Prints median wall seconds, median user+sys CPU seconds and
# the largest peak RSS, and checks that every decrypted model equals its original.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
N=5
COUNT=300
WORK=${TMPDIR:-/tmp}/onnx-protect-batch-bench
while getopts "n:c:w:" opt; do
    case $opt in
        n) N=$OPTARG ;;
        c) COUNT=$OPTARG ;;
        w) WORK=$OPTARG ;;
        *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,10p' "$0"; exit 2; }
[ -x /usr/bin/time ] || { echo "no /usr/bin/time: apt-get install -y time" >&2; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK/in"
models=()
for m in "$REPO"/fixtures/models/*/model.onnx; do
    case $m in */external_data/*) continue ;; esac
    models+=("$m")
done
for i in $(seq "$COUNT"); do
    m=${models[$(( (i - 1) % ${#models[@]} ))]}
    cp "$m" "$WORK/in/m$i-$(basename "$(dirname "$m")").onnx"
done
KEY=$WORK/bench.key
first_bin=${1#*=}
"$first_bin" keygen -o "$KEY" >/dev/null
# The decrypt input, written by the first binary (every build must read it).
"$first_bin" batch encrypt --dir "$WORK/in" --out-dir "$WORK/enc" --key-file "$KEY" >/dev/null
echo "$COUNT models, $(du -sb "$WORK/in" | cut -f1) bytes; $N rounds (+1 warm-up)"

RES=$WORK/raw.tsv
: >"$RES"
timed() { # name case command...
    local name=$1 case=$2
    shift 2
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    t1=$(date +%s.%N)
    read -r u s m <"$WORK/time"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$case" "$(echo "$t1 - $t0" | bc)" "$(echo "$u + $s" | bc)" "$m" >>"$RES.$round"
}
for round in $(seq 0 "$N"); do
    : >"$RES.$round"
    rm -rf "$WORK/cp"
    timed cp "cp -r" cp -r "$WORK/in" "$WORK/cp"
    for arg in "$@"; do
        name=${arg%%=*}
        bin=${arg#*=}
        rm -rf "$WORK/out-e"
        timed "$name" "batch encrypt" "$bin" batch encrypt --dir "$WORK/in" --out-dir "$WORK/out-e" --key-file "$KEY"
        rm -rf "$WORK/out-d"
        timed "$name" "batch decrypt" "$bin" batch decrypt --dir "$WORK/enc" --out-dir "$WORK/out-d" --key-file "$KEY"
        diff -r -q -x .onnx-protect-batch "$WORK/in" "$WORK/out-d" >/dev/null || { echo "$name: decrypted models differ from the originals" >&2; exit 1; }
    done
    [ "$round" -gt 0 ] && cat "$RES.$round" >>"$RES"
    rm -f "$RES.$round"
done
python3 - "$RES" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, case, wall, cpu, rss = line.rstrip("\n").split("\t")
    rows[(name, case)].append((float(wall), float(cpu), int(rss)))
cp = statistics.median(w for w, _, _ in rows[("cp", "cp -r")])
print(f"{'build':10s} {'case':15s} {'median s':>9s} {'x cp -r':>8s} {'cpu s':>7s} {'peak RSS MiB':>13s}")
for (name, case), v in rows.items():
    wall = statistics.median(w for w, _, _ in v)
    print(f"{name:10s} {case:15s} {wall:9.3f} {wall / cp:8.2f} {statistics.median(c for _, c, _ in v):7.2f} "
          f"{max(r for _, _, r in v) / 1024:13.1f}")
PY
