#!/usr/bin/env python3
"""Runs a command and reports the peak of its RSS split into anonymous and file-backed pages.

`/usr/bin/time -v` gives one number, the peak RSS, which counts the pages of a
read-only `mmap` of the input that the process has touched. Those are clean page
cache pages, shared with every other reader of the file, and the kernel can drop
them at any time; the anonymous part is the memory the process really owns. This
samples /proc/PID/status (VmHWM, RssAnon, RssFile) every 10 ms and prints the peaks
as one line of JSON. The sampling costs a little CPU: run.sh uses it in a separate,
untimed run.

  python3 bench/rss_sample.py -- CMD ARGS...
"""

import json
import subprocess
import sys
import time


def read_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0])  # KiB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def main():
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    p = subprocess.Popen(argv)
    peak = {"VmHWM": 0, "VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    while p.poll() is None:
        s = read_status(p.pid)
        for k in peak:
            if k in s:
                peak[k] = max(peak[k], s[k])
        time.sleep(0.01)
    print(json.dumps({"rc": p.returncode, **{k + "_kib": v for k, v in peak.items()}}))
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
