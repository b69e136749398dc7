#!/usr/bin/env python3
"""Benchmark: scan+patch of a whole drivers/net by pfq-omatic against Coccinelle.

Usage: bench/rewrite.py [--series 6.1] [--tree DIR] [--jobs 2] [--runs 3]

Extracts drivers/net from /usr/src/linux-source-SERIES.tar.xz (unless --tree is given),
then, in one run on the same files: `pfq-omatic patch` (best of --runs, after one warm-up
so both tools read from the page cache) and `spatch --sp-file bench/rules.cocci --dir ...
-j JOBS` (once: it takes tens of seconds). Prints the wall time of each, the ratio, the
sites each found (for the three entry points spatch knows and for all), the files where
spatch found a site pfq-omatic did not, and pfq-omatic's peak memory.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
COCCI_CALLEES = ("netif_rx", "netif_receive_skb", "napi_gro_receive")
_HOOK = re.compile(rb"\bpfq_(?:netif_rx|netif_receive_skb|gro_receive)\b")


def extract(series: str, dest: Path) -> Path:
    tarball = Path(f"/usr/src/linux-source-{series}.tar.xz")
    subprocess.run(["tar", "-xJf", str(tarball), "-C", str(dest), "--wildcards",
                    f"linux-source-{series}/drivers/net/*"], check=True)
    return dest / f"linux-source-{series}" / "drivers" / "net"


def run_omatic(tree: Path, out: Path, jobs: int) -> tuple[float, dict[str, object], int]:
    """Wall seconds, the report, and peak RSS in KiB of the largest process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "omatic", "patch", str(tree), "--out", str(out),
                    "--jobs", str(jobs)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, json.loads((out / "omatic-report.json").read_text()), peak


def spatch_sites(diff: bytes) -> Counter[str]:
    """Sites spatch rewrote, per file: hooks on added lines minus hooks on removed ones."""
    per_file: Counter[str] = Counter()
    current = ""
    for line in diff.splitlines():
        if line.startswith(b"+++ "):
            name = line[4:].split(b"\t")[0].decode(errors="replace")
            current = name[2:] if name.startswith("b/") else name
        elif line.startswith(b"+") and not line.startswith(b"+++"):
            per_file[current] += len(_HOOK.findall(line))
        elif line.startswith(b"-") and not line.startswith(b"---"):
            per_file[current] -= len(_HOOK.findall(line))
    return +per_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="6.1")
    parser.add_argument("--tree", type=Path, help="an unpacked drivers/net to use instead")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-spatch", action="store_true", help="time pfq-omatic only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="omatic-bench-") as tmp:
        work = Path(tmp)
        tree = args.tree or extract(args.series, work)
        files = sum(1 for _ in tree.rglob("*.c"))
        size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
        print(f"tree: {tree} ({files} .c files, {size / 1e6:.0f} MB)")

        run_omatic(tree, work / "warm", args.jobs)  # page cache, imports
        times = []
        for i in range(args.runs):
            wall, report, peak = run_omatic(tree, work / f"out{i}", args.jobs)
            times.append(wall)
        ours = min(times)
        totals = report["totals"]
        assert isinstance(totals, dict)
        sites = [s for s in report["sites"] if isinstance(s, dict)]  # type: ignore[attr-defined]
        ours_three = Counter(s["file"] for s in sites
                             if s["callee"] in COCCI_CALLEES and s["action"] == "rewrite")
        print(f"pfq-omatic patch -j {args.jobs}: {ours:.2f} s (best of {args.runs}: "
              f"{', '.join(f'{t:.2f}' for t in times)}); sites {totals['sites']} "
              f"(netif_rx/netif_receive_skb/napi_gro_receive: {sum(ours_three.values())}; "
              f"by callee {totals['by_callee']}; by context {totals['by_context']})")
        print(f"pfq-omatic peak RSS of the largest process: {peak / 1024:.0f} MB "
              f"(main process and {args.jobs} workers)")
        if args.no_spatch:
            return 0

        start = time.perf_counter()
        proc = subprocess.run(["spatch", "--sp-file", str(BENCH / "rules.cocci"),
                               "--dir", str(tree), "-j", str(args.jobs), "--very-quiet"],
                              capture_output=True, check=False)
        theirs_wall = time.perf_counter() - start
        theirs = spatch_sites(proc.stdout)
        print(f"spatch -j {args.jobs}: {theirs_wall:.2f} s (exit {proc.returncode}); "
              f"sites {sum(theirs.values())} in {len(theirs)} files")
        missed = {f: n for f, n in theirs.items() if n > ours_three.get(f, 0)}
        print(f"files where spatch rewrote more sites than pfq-omatic: {len(missed)} {missed}")
        print(f"ratio: pfq-omatic is {theirs_wall / ours:.1f}x faster than spatch; "
              f"finds {totals['sites']} sites against spatch's {sum(theirs.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
