#!/usr/bin/env python3
"""Benchmark: pfq-omatic's own work in a driver build against a plain Kbuild of it.

Usage: bench/build.py [--driver e1000e] [--kernel 6.1] [--jobs 2] [--runs 3]

In one run, for the same driver and kernel: a plain Kbuild of the vanilla driver (its
sources staged the same way, `make -C <build> M=... <CONFIG>=m modules`), then
`pfq-omatic build --force` (the PFQ module comes from the cache, as in any build but the
first). pfq-omatic's own work is its wall time minus its own Kbuild step: staging the
source from the tarball cache, hashing the inputs, rewriting, verifying, writing the
output. Last, a second build with nothing changed. Prints each figure, best of --runs,
and the overhead as a share of the plain Kbuild (target < 5%) and the no-change time
(target < 1 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omatic.build.pipeline import BuildRequest, build_driver, ensure_kmod
from omatic.build.source import TarballCache, lookup, stage
from omatic.kernels.find import default_kernel, find_kernel
from omatic.kernels.kernel import Kernel


def plain_kbuild(kernel: Kernel, driver: str, jobs: int, work: Path) -> float:
    """Seconds of a plain Kbuild of the vanilla driver, its sources staged beforehand, run
    where the kernel lives (here, or its kept system)."""
    assert kernel.source_tarball is not None, f"no linux-source for {kernel.release}"
    cache = TarballCache(kernel.source_tarball)
    module = lookup(cache.index(), driver, kernel.source_tarball.name)
    shutil.rmtree(work, ignore_errors=True)
    src = stage(cache.tree_for(module), module, work, "tarball", kernel.source_tarball)
    cmd = kernel.kbuild_argv((work / src.dir).resolve(), [f"-j{jobs}", f"{src.config}=m",
                                                         "modules"])
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", default="e1000e")
    parser.add_argument("--kernel", default=None, help="release or series (default: default)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    ensure_kmod(kernel, args.jobs)  # cached, as for every build but the very first

    with tempfile.TemporaryDirectory(prefix="omatic-bench-build-") as tmp:
        out_root = Path(tmp) / "out"
        plain, ours, own = [], [], []
        for _ in range(args.runs):
            plain.append(plain_kbuild(kernel, args.driver, args.jobs, Path(tmp) / "plain"))
            start = time.perf_counter()
            result = build_driver(BuildRequest(driver=args.driver, kernel=kernel,
                                               out_root=out_root, jobs=args.jobs, force=True))
            wall = time.perf_counter() - start
            assert result.ok, "the build did not verify"
            ours.append(wall)
            own.append(wall - result.report["timings"]["kbuild"])
        start = time.perf_counter()
        again = build_driver(BuildRequest(driver=args.driver, kernel=kernel,
                                          out_root=out_root, jobs=args.jobs))
        unchanged = time.perf_counter() - start
        assert again.up_to_date

    best_plain, best_own = min(plain), min(own)
    print(f"driver {args.driver}, kernel {kernel.release}, -j{args.jobs}, best of {args.runs}")
    print(f"plain Kbuild of the vanilla driver: {best_plain:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in plain)})")
    print(f"pfq-omatic build --force: {min(ours):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in ours)}); last stages {result.report['timings']}")
    print(f"pfq-omatic's own work (build minus its Kbuild step): {best_own:.3f} s "
          f"= {100 * best_own / best_plain:.1f}% of the plain Kbuild (target < 5%)")
    print(f"second build, nothing changed: {unchanged:.3f} s (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
