#!/usr/bin/env bash
# The JavaScript loader against the Rust one and against onnxruntime-node's plain file:
#
#   bench/js.sh [-n ROUNDS] [-d DATA_DIR]
#
# 1. Decrypting the 1 GiB bench model in memory (every byte verified, the key given):
#    js/bench/decrypt.mjs in Node (decryptFile by the native engine and by the JavaScript
#    engine; and readModelFiles + decrypt) against
#    crates/core/examples/decrypt_in_memory (Rust, release: map + decrypt), each a fresh
#    process per round, rounds interleaved.
# 2. A ~100 MB model to a ready onnxruntime-node session: from the plain file (onnxruntime
#    reads it), from the plain file's bytes (read into memory first), and
#    createSessionFromFile on the protected copy (decryptFile + the session from the bytes),
#    by the native engine and by the JavaScript engine.
# Two policies: the built-in one (every weight, CTR) and half of each weight's rows in the
# format-preserving mode. Medians of ROUNDS (default 7) after one warm-up round; the page
# cache stays warm; the load average is printed, since the machine may be shared.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=7
DATA=$ROOT/bench-data
while getopts "n:d:" opt; do case $opt in n) N=$OPTARG ;; d) DATA=$OPTARG ;; *) exit 2 ;; esac; done
cd "$ROOT"
cargo build --release -q --bin onnx-protect
cargo build --release -q -p onnx-protect-core --example decrypt_in_memory
(cd js && npm ci --no-audit --no-fund --loglevel=error && npm run -s build && bash scripts/build-native.sh --release)
BIN=target/release/onnx-protect
EX=target/release/examples/decrypt_in_memory
SMALL=$DATA/js100mb/single/model.onnx
[ -f "$DATA/single/model.onnx" ] || python3 bench/make_models.py --out "$DATA" --only single
# Two blocks and a 1,000-token embedding: about 105 MB.
[ -f "$SMALL" ] || python3 bench/make_models.py --out "$DATA/js100mb" --only single --single-blocks 2 --single-vocab 1000
W=$DATA/js-work
mkdir -p "$W"
[ -f "$W/bench.key" ] || $BIN keygen -o "$W/bench.key" -q
POLICIES=(builtin half-fp)
args() { case $1 in builtin) ;; half-fp) echo "--coefficient *=0.5 --mode *=fp" ;; esac; }
for m in big:"$DATA/single/model.onnx" small:"$SMALL"; do
  name=${m%%:*}; src=${m#*:}
  for pol in "${POLICIES[@]}"; do
    # shellcheck disable=SC2046
    $BIN encrypt "$src" -o "$W/$name.$pol.onnx" --key-file "$W/bench.key" -q --force $(args "$pol")
  done
done
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# The CPU counters of /proc/stat ("cpu" line: user nice system idle iowait irq softirq steal).
cpu_now() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }
CPU0=$(cpu_now)
# Runs a command, appending its CPU time (user + system seconds) to PREFIX.cpu.
cpu() { local prefix=$1; shift; /usr/bin/time -f '%U %S' -o "$prefix.time" "$@"; awk '{print $1 + $2}' "$prefix.time" >> "$prefix.cpu"; }
{
  echo "commit $(git rev-parse --short HEAD); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); node $(node --version); load at start $(cut -d' ' -f1-3 /proc/loadavg)"
  for pol in "${POLICIES[@]}"; do
    for f in rust native jsfile jsmem; do : > "$W/$f.txt"; : > "$W/$f.cpu"; done
    for r in $(seq 0 "$N"); do
      # Each process's CPU time (user + system, all threads, start-up included) beside the
      # time it reports.
      rs=$(cpu "$W/rust" $EX "$W/big.$pol.onnx" "$W/bench.key" 1 | awk '/^decrypt_in_memory/{print $2}')
      nf=$(cpu "$W/native" node js/bench/decrypt.mjs native "$W/big.$pol.onnx" "$W/bench.key" | awk '{print $2}')
      jf=$(cpu "$W/jsfile" node js/bench/decrypt.mjs file "$W/big.$pol.onnx" "$W/bench.key" | awk '{print $2}')
      jm=$(cpu "$W/jsmem" node js/bench/decrypt.mjs memory "$W/big.$pol.onnx" "$W/bench.key" | awk '{print $2}')
      if [ "$r" = 0 ]; then for f in rust native jsfile jsmem; do : > "$W/$f.cpu"; done; continue; fi
      echo "$rs" >> "$W/rust.txt"; echo "$nf" >> "$W/native.txt"; echo "$jf" >> "$W/jsfile.txt"; echo "$jm" >> "$W/jsmem.txt"
    done
    R=$(median < "$W/rust.txt"); N_=$(median < "$W/native.txt"); F=$(median < "$W/jsfile.txt"); M=$(median < "$W/jsmem.txt")
    RC=$(median < "$W/rust.cpu"); NC=$(median < "$W/native.cpu"); FC=$(median < "$W/jsfile.cpu"); MC=$(median < "$W/jsmem.cpu")
    printf '1 GiB, %s: Rust decrypt_in_memory %.3f s; Node decryptFile native %.3f s (%.2fx), js %.3f s (%.2fx), readModelFiles + decrypt %.3f s (%.2fx)\n' \
      "$pol" "$R" "$N_" "$(echo "$N_ / $R" | bc -l)" "$F" "$(echo "$F / $R" | bc -l)" "$M" "$(echo "$M / $R" | bc -l)"
    printf '    CPU time per process: Rust %.2f s, native %.2f s (%.2fx), js %.2f s (%.2fx), readModelFiles + decrypt %.2f s (%.2fx)\n' \
      "$RC" "$NC" "$(echo "$NC / $RC" | bc -l)" "$FC" "$(echo "$FC / $RC" | bc -l)" "$MC" "$(echo "$MC / $RC" | bc -l)"
  done
  for pol in "${POLICIES[@]}"; do
    : > "$W/plain.txt"; : > "$W/bytes.txt"; : > "$W/prot.txt"; : > "$W/protjs.txt"
    for r in $(seq 0 "$N"); do
      p=$(node js/bench/session.mjs plain "$SMALL" | awk '{print $2}')
      b=$(node js/bench/session.mjs plain-bytes "$SMALL" | awk '{print $2}')
      q=$(node js/bench/session.mjs protected "$W/small.$pol.onnx" "$W/bench.key" | awk '{print $2}')
      j=$(node js/bench/session.mjs protected-js "$W/small.$pol.onnx" "$W/bench.key" | awk '{print $2}')
      [ "$r" = 0 ] && continue
      echo "$p" >> "$W/plain.txt"; echo "$b" >> "$W/bytes.txt"; echo "$q" >> "$W/prot.txt"; echo "$j" >> "$W/protjs.txt"
    done
    P=$(median < "$W/plain.txt"); B=$(median < "$W/bytes.txt"); Q=$(median < "$W/prot.txt"); J=$(median < "$W/protjs.txt")
    printf '%s MB model, %s: onnxruntime-node from the plain file %.3f s, from its bytes %.3f s (%.2fx); createSessionFromFile on the protected copy, native engine %.3f s (%.2fx), js engine %.3f s (%.2fx)\n' \
      "$(( $(stat -c %s "$SMALL") / 1000000 ))" "$pol" "$P" "$B" "$(echo "$B / $P" | bc -l)" "$Q" "$(echo "$Q / $P" | bc -l)" "$J" "$(echo "$J / $P" | bc -l)"
  done
  read -r T0 S0 <<< "$CPU0"; read -r T1 S1 <<< "$(cpu_now)"
  echo "load at end $(cut -d' ' -f1-3 /proc/loadavg); steal during the run $(echo "100 * ($S1 - $S0) / ($T1 - $T0)" | bc -l | cut -c1-4)%"
} | tee "$W/results.txt"
