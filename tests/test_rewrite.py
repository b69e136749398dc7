"""The rewriter on C fixtures written here: sites found, files rewritten, bytes kept.

Golden files beside each fixture in tests/fixtures/rewrite/:
  NAME.sites  what `pfq-omatic scan NAME` prints per site (tab-separated);
  NAME.out    the rewritten file (absent when the file must stay unchanged).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

import omatic.build.rewrite
from omatic.build.difftext import diff_edits
from omatic.build.rewrite import Edit, OverlapError, Rewriter, apply_edits
from omatic.cli import main
from omatic.rules import Rule

pytestmark = pytest.mark.unit

CASES = Path(__file__).parent / "fixtures" / "rewrite"
SOURCES = sorted(p for p in CASES.iterdir() if p.suffix in (".c", ".h"))


@pytest.fixture(scope="module")
def rewriter(rules: list[Rule]) -> Rewriter:
    return Rewriter(rules)


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_scan_matches_golden_sites(source: Path) -> None:
    out = io.StringIO()
    assert main(["scan", str(source)], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[:-1] == source.with_name(source.name + ".sites").read_text().splitlines()


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_rewrite_matches_golden_output(rewriter: Rewriter, source: Path) -> None:
    data = source.read_bytes()
    result = rewriter.rewrite(data, source.name)
    golden = source.with_name(source.name + ".out")
    if golden.exists():
        assert result.status == "rewritten"
        assert result.new_data == golden.read_bytes()
    else:
        assert result.status == "unchanged"
        assert result.new_data is None


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_rewriting_twice_changes_nothing(rewriter: Rewriter, source: Path) -> None:
    once = rewriter.rewrite(source.read_bytes(), source.name)
    again = rewriter.rewrite(once.new_data or source.read_bytes(), source.name)
    assert again.status == "unchanged"
    assert all(s.action == "report" for s in again.sites)


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_bytes_outside_edits_are_kept(rewriter: Rewriter, source: Path) -> None:
    data = source.read_bytes()
    result = rewriter.rewrite(data, source.name)
    if result.new_data is None:
        return
    # Undo each edit on the result: the original bytes must come back exactly.
    undo, shift = [], 0
    for e in sorted(result.edits, key=lambda e: e.start):
        undo.append(Edit(e.start + shift, e.start + shift + len(e.new), e.old))
        shift += len(e.new) - (e.end - e.start)
    assert apply_edits(result.new_data, undo) == data


def test_crlf_and_latin1_survive(rewriter: Rewriter) -> None:
    crlf = rewriter.rewrite((CASES / "crlf.c").read_bytes(), "crlf.c").new_data
    assert crlf is not None and b"#include <pfq/hooks.h>\r\n" in crlf
    assert crlf.count(b"\n") == crlf.count(b"\r\n")
    latin1 = rewriter.rewrite((CASES / "latin1.c").read_bytes(), "latin1.c").new_data
    assert latin1 is not None and b"Fran\xe7ois M\xfcller \xff\xfe" in latin1


def test_include_goes_after_the_last_include_not_before_pr_fmt(rewriter: Rewriter) -> None:
    new = rewriter.rewrite((CASES / "calls.c").read_bytes(), "calls.c").new_data
    assert new is not None
    lines = new.splitlines()
    assert lines.index(b"#include <pfq/hooks.h>") == lines.index(b'#include "fixture.h"') + 1
    assert lines.index(b"#include <pfq/hooks.h>") > lines.index(
        b'#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt')


def test_a_rewrite_that_parses_worse_is_refused(rewriter: Rewriter,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omatic.build.rewrite, "HOOK_INCLUDE", b"int (((;")
    result = rewriter.rewrite((CASES / "calls.c").read_bytes(), "calls.c")
    assert result.status == "refused"
    assert "parses with" in result.reason
    assert result.new_data is None and len(result.sites) == 6


def test_overlapping_edits_are_rejected() -> None:
    with pytest.raises(OverlapError):
        apply_edits(b"abcdef", [Edit(0, 3, b"x"), Edit(2, 4, b"y")])
    with pytest.raises(OverlapError):
        apply_edits(b"abcdef", [Edit(1, 1, b"x"), Edit(1, 1, b"y")])
    assert apply_edits(b"abcdef", [Edit(4, 6, b"Z"), Edit(0, 1, b"XY")]) == b"XYbcdZ"


def test_partial_parse_agrees_with_whole_file_parse(rewriter: Rewriter,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    partial = {p.name: rewriter.rewrite(p.read_bytes(), p.name) for p in SOURCES}
    monkeypatch.setattr(omatic.build.rewrite, "top_level_regions", lambda data, spans: None)
    whole = {p.name: rewriter.rewrite(p.read_bytes(), p.name) for p in SOURCES}
    for name in partial:
        assert partial[name].sites == whole[name].sites, name
        assert partial[name].new_data == whole[name].new_data, name


def _applies(tmp_path: Path, name: str, old: bytes, diff: bytes, new: bytes) -> None:
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    (tree / name).write_bytes(old)
    subprocess.run(["patch", "-p1", "--quiet", "--batch"], input=diff, cwd=tree, check=True)
    assert (tree / name).read_bytes() == new


@pytest.mark.parametrize("source", [p for p in SOURCES if p.with_name(p.name + ".out").exists()],
                         ids=lambda p: p.name)
def test_diff_applies_with_patch(rewriter: Rewriter, tmp_path: Path, source: Path) -> None:
    data = source.read_bytes()
    result = rewriter.rewrite(data, source.name)
    assert result.new_data is not None
    _applies(tmp_path, source.name, data, result.diff, result.new_data)


@pytest.mark.parametrize(("old", "edits"), [
    (b"a\nb\nc", [Edit(4, 5, b"C")]),                       # last line without newline
    (b"a\nb\nc", [Edit(5, 5, b"\nd\n")]),                   # append after it
    (b"x\n" * 20, [Edit(0, 0, b"top\n"), Edit(38, 39, b"y")]),  # two hunks, far apart
    (b"l1\r\nl2\r\n", [Edit(4, 4, b"inc\r\n"), Edit(4, 6, b"L2")]),  # insert, then same line
    (b"\xff\xfe\nabc\n", [Edit(4, 5, b"\xe9")]),            # bytes that are not UTF-8
])
def test_diff_edge_cases_apply(tmp_path: Path, old: bytes, edits: list[Edit]) -> None:
    new = apply_edits(old, edits)
    _applies(tmp_path, "f.c", old, diff_edits("f.c", old, edits), new)


def test_no_edits_no_diff() -> None:
    assert diff_edits("f.c", b"abc\n", []) == b""


def test_patch_tool_is_installed() -> None:
    assert shutil.which("patch"), "`make setup` installs patch"
