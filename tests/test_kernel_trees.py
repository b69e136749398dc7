"""The rewriter on the real drivers/net of Debian's 6.1 and 6.12 kernels.

The trees are extracted from /usr/src/linux-source-X.Y.tar.xz at test time. The site
count of every file is checked against tests/independent.py, which shares no code with
the rewriter.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from independent import count_sites, strip_comments
from omatic.build.tree import patch_tree, scan_tree
from omatic.rules import Rule

pytestmark = pytest.mark.kbuild


def independent_counts(root: Path, callees: list[str]) -> dict[str, int]:
    word = re.compile(rb"\b(?:" + "|".join(callees).encode() + rb")\b")
    files = [Path(d) / f for d, _, names in os.walk(root) for f in names
             if f.endswith((".c", ".h")) and word.search((Path(d) / f).read_bytes())]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        counts = pool.map(lambda p: count_sites(strip_comments(p), callees), files)
        return {str(p.relative_to(root)): n for p, n in zip(files, counts, strict=True) if n}


def test_every_file_has_the_independently_counted_sites(kernel_drivers_net: Path,
                                                        rules: list[Rule]) -> None:
    report = scan_tree(kernel_drivers_net, rules)
    ours = Counter(s.file for s in report.sites)
    theirs = independent_counts(kernel_drivers_net, [r.callee for r in rules])
    assert dict(ours) == theirs
    # drivers/net holds hundreds of sites; a rewriter that finds few is broken.
    assert sum(ours.values()) > 400
    assert report.problems == []


def test_patched_tree_has_nothing_left_to_rewrite(kernel_drivers_net: Path, rules: list[Rule],
                                                  tmp_path: Path) -> None:
    out = tmp_path / "accel"
    report = patch_tree(kernel_drivers_net, out, rules)
    rewrite = [s for s in report.sites if s.action == "rewrite"]
    assert len(rewrite) > 400
    assert report.totals()["files_refused"] == 0
    left = [s for s in scan_tree(out, rules).sites if s.action == "rewrite"]
    assert left == []
    # The diff applies to a pristine copy and gives the rewritten files.
    pristine = tmp_path / "pristine"
    shutil.copytree(kernel_drivers_net, pristine, symlinks=True)
    subprocess.run(["patch", "-p1", "--quiet", "--batch", "-i", str(out / "omatic.patch")],
                   cwd=pristine, check=True)
    for f in report.files:
        if f.status == "rewritten":
            assert (pristine / f.file).read_bytes() == (out / f.file).read_bytes(), f.file
