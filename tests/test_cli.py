"""`pfq-omatic scan` and `patch` on trees: reports, outputs, and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import omatic.build.tree
from asuser import as_user, one_line
from omatic.cli import main

pytestmark = pytest.mark.unit

CASES = Path(__file__).parent / "fixtures" / "rewrite"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def tree_digest(root: Path) -> str:
    """A digest of every path, mode and content under root (links by target)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)}\0{st.st_mode}\0".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A driver-shaped tree: the fixtures in a subfolder, a Makefile, a header."""
    root = tmp_path / "drv"
    shutil.copytree(CASES, root / "sub", ignore=shutil.ignore_patterns("*.sites", "*.out"))
    (root / "Makefile").write_text("obj-m += drv.o\n")
    (root / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (root / "sub" / "run.sh").chmod(0o755)
    return root


def test_scan_json_has_stable_keys(src: Path) -> None:
    code, out = run("scan", str(src), "--json")
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"tool", "version", "command", "root", "totals", "sites", "problems"}
    site = report["sites"][0]
    assert set(site) == {"file", "line", "column", "callee", "hook", "function", "context",
                         "action", "reason", "start", "end"}
    assert report["totals"]["sites"] == len(report["sites"]) == 22
    assert report["totals"]["by_action"] == {"report": 1, "rewrite": 21}
    assert {s["context"] for s in report["sites"]} == {"code", "macro-body", "value"}
    assert all(s["file"].startswith("sub/") for s in report["sites"])


def test_patch_writes_tree_diff_and_report_and_leaves_src_alone(src: Path,
                                                                tmp_path: Path) -> None:
    before = tree_digest(src)
    out = tmp_path / "out" / "accel"
    code, text = run("patch", str(src), "--out", str(out))
    assert code == 0, text
    assert tree_digest(src) == before
    assert (out / "Makefile").read_text() == "obj-m += drv.o\n"
    assert os.access(out / "sub" / "run.sh", os.X_OK)
    report = json.loads((out / "omatic-report.json").read_text())
    assert report["totals"]["files_rewritten"] == 8
    assert sum(len(f["edits"]) for f in report["files"]) == 21 + 8  # sites + includes
    # The diff turns a pristine copy into the output, byte for byte.
    pristine = tmp_path / "pristine"
    shutil.copytree(src, pristine)
    subprocess.run(["patch", "-p1", "--quiet", "--batch", "-i", str(out / "omatic.patch")],
                   cwd=pristine, check=True)
    for name in os.listdir(src / "sub"):
        assert (pristine / "sub" / name).read_bytes() == (out / "sub" / name).read_bytes()
    # Patching the patched tree changes nothing.
    again = tmp_path / "again"
    assert run("patch", str(out), "--out", str(again))[0] == 0
    assert (again / "omatic.patch").read_bytes() == b""


def test_output_inside_or_equal_to_source_is_refused(src: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_digest(src)
    for out in (src, src / "out", src / "sub" / "x"):
        assert run("patch", str(src), "--out", str(out))[0] == 1
        assert "outside the source tree" in capsys.readouterr().err
    assert tree_digest(src) == before


def test_non_empty_output_is_refused(src: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep").write_text("mine")
    assert run("patch", str(src), "--out", str(out))[0] == 1
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_failure_midway_leaves_no_output(src: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(omatic.build.tree, "_report", boom)
    assert run("patch", str(src), "--out", str(tmp_path / "out"))[0] == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drv"]


@pytest.mark.parametrize("setup", ["missing", "empty", "no_c", "loop"])
def test_bad_paths_are_one_line_user_errors(tmp_path: Path, setup: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p"
    if setup == "empty":
        path.mkdir()
    elif setup == "no_c":
        path.mkdir()
        (path / "README").write_text("no C here\n")
    elif setup == "loop":
        path.symlink_to(tmp_path / "q")
        (tmp_path / "q").symlink_to(path)
    assert run("scan", str(path))[0] == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pfq-omatic: error: ")
    assert "Traceback" not in err


def test_bad_files_among_good_ones_are_reported(src: Path) -> None:
    (src / "blob.c").write_bytes(b"\x7fELF\x00\x00netif_rx(skb);")
    os.mkfifo(src / "pipe.c")
    (src / "loop.c").symlink_to(src / "loop.c")
    (src / "elsewhere.h").symlink_to("/nonexistent/elsewhere.h")
    code, out = run("scan", str(src), "--json")
    assert code == 0
    problems = {p["file"]: p["error"] for p in json.loads(out)["problems"]}
    assert problems == {
        "blob.c": "binary file (NUL bytes), not C",
        "pipe.c": "not a regular file",
        "loop.c": "symbolic link, not followed",
        "elsewhere.h": "symbolic link, not followed",
    }
    assert json.loads(out)["totals"]["sites"] == 22


def test_usage_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("patch", str(CASES))[0] == 1
    assert "--out" in capsys.readouterr().err
    assert run("scan", str(CASES), "--jobs", "0")[0] == 1
    assert run("frobnicate")[0] == 1


def test_module_entry_point_runs_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "omatic", "scan", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("no such file or directory")
    assert "Traceback" not in proc.stderr


def test_scan_in_parallel_equals_scan_in_one_process(src: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    one = json.loads(run("scan", str(src), "--json", "--jobs", "1")[1])
    monkeypatch.setattr(omatic.build.tree, "_PARALLEL_THRESHOLD", 1)
    two = json.loads(run("scan", str(src), "--json", "--jobs", "2")[1])
    assert one == two


@pytest.mark.parametrize("argv", [("scan", "--json", str(CASES)), ("scan", str(CASES)),
                                  ("kernels", "--json")])
def test_a_closed_pipe_ends_quietly(argv: tuple[str, ...]) -> None:
    """`pfq-omatic ... | head -1`: the reader goes first; no traceback, the exit status
    of a command SIGPIPE ended (as `ls | head`)."""
    proc = subprocess.Popen([sys.executable, "-m", "omatic", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it writes: every write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_patch_into_a_read_only_folder(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    run = as_user(tmp_path, "patch", str(CASES), "--out", "ro/p", read_only_dir=tmp_path / "ro")
    one_line(run, 1, "ro", "cannot write the output")
    assert not list((tmp_path / "ro").iterdir())


def test_patch_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine\n")
    one_line(as_user(tmp_path, "patch", str(CASES), "--out", "f"), 1, "f: a file is there")
    one_line(as_user(tmp_path, "patch", str(CASES), "--out", "f/p"), 1, "f", "cannot write")
    assert (tmp_path / "f").read_text() == "mine\n"

