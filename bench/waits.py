#!/usr/bin/env python3
"""Where a command's threads wait: runs CMD and, every 10 ms until it ends, reads the state
of each of its threads (running, or the kernel function it sleeps in: `/proc/PID/task/*/wchan`)
and the machine's dirty and writeback page counts (`/proc/vmstat`). Prints the wall time, the
peaks of dirty and writeback memory, and the share of thread samples per state, the most
frequent first: `R` running, `folio_wait_bit_common` waiting for a page under I/O (a read
from disk, or a write back of it), `balance_dirty_pages` held back while too much written
data waits for the disk, `futex_do_wait` waiting for another thread of the process.

    python3 bench/waits.py CMD ARGS...

The kernel names functions only to root (otherwise wchan reads `0`).
"""
import collections
import os
import subprocess
import sys
import time


def vmstat():
    pages = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, v = line.split()
            if k in ("nr_dirty", "nr_writeback"):
                pages[k] = int(v)
    return pages


def main():
    cmd = sys.argv[1:]
    if not cmd:
        raise SystemExit(__doc__)
    mib = os.sysconf("SC_PAGE_SIZE") / 2**20
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    states, peak = collections.Counter(), collections.Counter()
    while p.poll() is None:
        try:
            tasks = os.listdir(f"/proc/{p.pid}/task")
        except OSError:
            tasks = []
        for t in tasks:
            try:
                with open(f"/proc/{p.pid}/task/{t}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"/proc/{p.pid}/task/{t}/wchan") as f:
                    where = f.read().strip() or "-"
            except OSError:
                continue
            states["R" if state == "R" else where] += 1
        for k, v in vmstat().items():
            peak[k] = max(peak[k], v)
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    n = max(sum(states.values()), 1)
    print(f"{' '.join(cmd)}: exit {p.returncode}, {wall:.2f} s; peak dirty {peak['nr_dirty'] * mib:.0f} MiB, "
          f"writeback {peak['nr_writeback'] * mib:.0f} MiB; "
          + ", ".join(f"{k} {100 * v / n:.0f}%" for k, v in states.most_common(6)))
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
