#!/usr/bin/env bash
# Interleaved A/B of arbitrary commands: every round runs each command once (the
# first round is a warm-up and is dropped); prints the median wall seconds, median
# user+sys CPU seconds and median steal (vCPU time the hypervisor took) per command.
# Before each run, OUT (default bench-data/out/ab.out in the checkout) is removed and `sync` run.
#
#   N=6 bench/ab.sh "name=command ..." "name=command ..." ...
#
# Example: a tiered model decrypted by two builds, with cp as a yardstick:
#   N=5 bench/ab.sh "cp=cp M O" "old=BIN_A decrypt T -o O --key-file K" "new=BIN_B decrypt T -o O --key-file K"
N=${N:-8}
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/bench-data/out/ab.out}
declare -a names cmds
for a in "$@"; do names+=("${a%%=*}"); cmds+=("${a#*=}"); done
TSV=/tmp/ab-$$.tsv; : > $TSV
steal() { awk '/^cpu /{print $9}' /proc/stat; }
for r in $(seq 0 $N); do
  for i in "${!names[@]}"; do
    rm -rf "$OUT"; sync
    s0=$(steal); t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o /tmp/ab-time-$$ bash -c "${cmds[$i]}" >/dev/null 2>/tmp/ab-err-$$ || { echo "FAIL ${names[$i]}"; cat /tmp/ab-err-$$; }
    t1=$(date +%s.%N); s1=$(steal)
    [ $r -gt 0 ] && echo -e "${names[$i]}\t$(echo "$t1 - $t0" | bc)\t$(awk '{print $1+$2}' /tmp/ab-time-$$)\t$(( s1 - s0 ))" >> $TSV
  done
done
python3 - $TSV <<'PY'
import sys,statistics as st,collections
d=collections.defaultdict(list)
for l in open(sys.argv[1]):
    n,w,c,s=l.split('\t'); d[n].append((float(w),float(c),int(s)/100))
for n,v in d.items():
    print(f"{n:12s} wall {st.median(x[0] for x in v):.3f} (min {min(x[0] for x in v):.3f})  cpu {st.median(x[1] for x in v):.3f}  steal {st.median(x[2] for x in v):.2f}")
PY
