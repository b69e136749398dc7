"""The report of a matrix (`omatic.matrix.report`): matrix.json, junit.xml, matrix.md, the
exit code, and the GitHub Actions workflow that runs the same matrix.

Cells are written here: two drivers on three kernels, every status once at least. The
workflow's shape is checked here; actionlint is not (its PyPI package fetches the binary
from GitHub at install time, which this project's machines cannot reach).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import junitparser
import pytest

from omatic.errors import PathError, UserError
from omatic.matrix.report import (
    Cell,
    emit_github_actions,
    exit_code,
    kernel_order,
    read_cells,
    write_outputs,
)

pytestmark = pytest.mark.unit

COMMAND = "pfq-omatic matrix --driver e1000e --driver igb --out out"
DATE = "2026-11-23T10:00:00Z"
#: The kernels of the cells, in the order the reports must show them.
KERNELS = [("6.1.0-56-amd64", "bookworm"), ("6.12.57+deb13-amd64", "trixie"),
           ("7.2.0-1-amd64", "sid")]
K61, K612, K72 = (release for release, _ in KERNELS)
SUITES = dict(KERNELS)


def cell(driver: str, kernel: str, status: str, reason: str = "", **more: Any) -> Cell:
    return Cell(driver=driver, kernel=kernel, suite=SUITES[kernel], status=status,
                seconds=more.pop("seconds", 12.5), log=f"logs/{kernel}/{driver}.log",
                reproducer=f"pfq-omatic build {driver} --kernel {kernel}", reason=reason,
                **more)


def sample_cells() -> list[Cell]:
    """2 drivers x 3 kernels, every status, an expected and an unexpected failure; not in
    the order the reports use."""
    return [
        cell("igb", K72, "pass", lab=True, seconds=30),
        cell("e1000e", K72, "skip", "CONFIG_E1000E is not set in this kernel"),
        cell("igb", K612, "error", "QEMU exited 1 before the guest booted"),
        cell("e1000e", K612, "fail", "napi_gro_receive has no rewrite rule", expected=True),
        cell("igb", K61, "fail", "modpost: pfq_receive undefined"),
        cell("e1000e", K61, "pass"),
    ]


def ordered(cells: list[Cell]) -> list[Cell]:
    return sorted(cells, key=lambda c: ([r for r, _ in KERNELS].index(c.kernel), c.driver))


# -- matrix.json and the exit code -------------------------------------------------------

def test_matrix_json_round_trips(tmp_path: Path) -> None:
    cells = sample_cells()
    write_outputs(cells, tmp_path, COMMAND, DATE)
    assert read_cells(tmp_path) == ordered(cells)
    document = json.loads((tmp_path / "matrix.json").read_text())
    assert list(document) == ["cells", "command", "date", "summary"]
    assert (document["command"], document["date"]) == (COMMAND, DATE)
    assert all(list(c) == sorted(c) for c in document["cells"])
    assert [(c["kernel"], c["driver"]) for c in document["cells"]] == [
        (K61, "e1000e"), (K61, "igb"), (K612, "e1000e"), (K612, "igb"),
        (K72, "e1000e"), (K72, "igb")]


def test_summary_counts_add_up(tmp_path: Path) -> None:
    write_outputs(sample_cells(), tmp_path, COMMAND, DATE)
    summary = json.loads((tmp_path / "matrix.json").read_text())["summary"]
    assert summary == {"pass": 2, "fail": 2, "error": 1, "skip": 1, "expected": 1,
                       "vanilla_fails": 0, "ok": False}
    assert sum(summary[s] for s in ("pass", "fail", "error", "skip")) == 6


@pytest.mark.parametrize(("extra", "code"), [
    ([], 0),
    ([cell("igb", K61, "fail", "modpost: pfq_receive undefined")], 2),
    ([cell("igb", K612, "error", "no network")], 2),
])
def test_exit_code(extra: list[Cell], code: int) -> None:
    # pass, skip and an expected failure are ok; anything else makes the matrix fail.
    fine = [cell("e1000e", K61, "pass"), cell("e1000e", K72, "skip", "not built"),
            cell("e1000e", K612, "fail", "known", expected=True)]
    assert exit_code(fine + extra) == code


def test_cell_validates_status() -> None:
    with pytest.raises(ValueError, match="status 'broken'"):
        cell("e1000e", K61, "broken")


@pytest.mark.parametrize("damage", [
    lambda doc: doc["cells"][0].update(status="exploded"),
    lambda doc: doc["cells"][0].pop("kernel"),
    lambda doc: doc["cells"][0].update(seconds="long"),
    lambda doc: doc.pop("cells"),
])
def test_read_cells_rejects_a_damaged_matrix_json(
        tmp_path: Path, damage: Callable[[dict[str, Any]], object]) -> None:
    write_outputs(sample_cells(), tmp_path, COMMAND, DATE)
    path = tmp_path / "matrix.json"
    document = json.loads(path.read_text())
    damage(document)
    path.write_text(json.dumps(document))
    with pytest.raises(PathError, match=r"not a matrix\.json"):
        read_cells(tmp_path)


def test_read_cells_without_matrix_json(tmp_path: Path) -> None:
    with pytest.raises(PathError, match=r"no matrix\.json here"):
        read_cells(tmp_path)


@pytest.mark.parametrize(("older", "newer"), [
    ("6.1.0-56-amd64", "6.12.57+deb13-amd64"),
    ("6.9.12-amd64", "6.10.3-amd64"),
    ("6.1.0-9-amd64", "6.1.0-10-amd64"),
    ("6.12.57+deb13-amd64", "7.2.0-1-amd64"),
])
def test_kernels_sort_by_their_numbers(older: str, newer: str) -> None:
    assert kernel_order(older) < kernel_order(newer)


# -- junit.xml ---------------------------------------------------------------------------

def test_junit_has_a_suite_per_kernel(tmp_path: Path) -> None:
    write_outputs(sample_cells(), tmp_path, COMMAND, DATE)
    xml = junitparser.JUnitXml.fromfile(str(tmp_path / "junit.xml"))
    suites = list(xml)
    assert [s.name for s in suites] == [K61, K612, K72]
    results = {}
    for suite in suites:
        assert [p.value for p in suite.properties()] == [SUITES[suite.name]]
        for case in suite:
            assert case.classname == suite.name
            assert case.time == (30.0 if (case.name, suite.name) == ("igb", K72) else 12.5)
            assert f"pfq-omatic build {case.name} --kernel {suite.name}" in case.system_out
            results[case.name, suite.name] = [(type(r).__name__, r.message) for r in case.result]
    assert results == {
        ("e1000e", K61): [],
        ("igb", K61): [("Failure", "modpost: pfq_receive undefined")],
        ("e1000e", K612): [("Skipped", "expected failure: napi_gro_receive has no rewrite rule")],
        ("igb", K612): [("Error", "QEMU exited 1 before the guest booted")],
        ("e1000e", K72): [("Skipped", "CONFIG_E1000E is not set in this kernel")],
        ("igb", K72): [],
    }
    assert (xml.tests, xml.failures, xml.errors, xml.skipped) == (6, 1, 1, 2)


# -- matrix.md ---------------------------------------------------------------------------

def table(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[part.strip() for part in row.strip("|").split(" | ")] for row in rows]


def test_markdown_table(tmp_path: Path) -> None:
    write_outputs(sample_cells(), tmp_path, COMMAND, DATE)
    text = (tmp_path / "matrix.md").read_text()
    assert text.startswith("# ")
    assert f"`{COMMAND}` on {DATE}" in text
    assert table(text) == [
        ["driver", f"{K61}<br>bookworm", f"{K612}<br>trixie", f"{K72}<br>sid"],
        ["---", "---", "---", "---"],
        ["e1000e", "pass", "xfail [1]", "skip [2]"],
        ["igb", "**FAIL** [3]", "error [4]", "pass"],
    ]
    notes = text.split("## Notes", 1)[1]
    assert re.findall(r"^\d+\. .*$", notes, re.M) == [
        f"1. e1000e on {K612}: napi_gro_receive has no rewrite rule",
        f"2. e1000e on {K72}: CONFIG_E1000E is not set in this kernel",
        f"3. igb on {K61}: modpost: pfq_receive undefined",
        f"4. igb on {K612}: QEMU exited 1 before the guest booted",
    ]
    summary, per_kernel = text.split("Per kernel:", 1)
    assert "2 pass, 2 fail (1 expected), 1 error, 1 skip" in summary.strip().splitlines()[-1]
    assert per_kernel.split() == ["-", f"{K61}:", "1", "of", "2", "pass", "(50.0%)",
                                  "-", f"{K612}:", "0", "of", "2", "pass", "(0.0%)",
                                  "-", f"{K72}:", "1", "of", "2", "pass", "(50.0%)"]


def test_a_failure_the_unrewritten_driver_shares_is_shown_and_still_fails(
        tmp_path: Path) -> None:
    cells = [cell("bnx9", K61, "fail", "fails unrewritten too: x.h: no such file"),
             cell("e1000e", K61, "pass")]
    cells[0].vanilla_fails = True
    write_outputs(cells, tmp_path, COMMAND, DATE)
    text = (tmp_path / "matrix.md").read_text()
    assert table(text)[2] == ["bnx9", "**FAIL** (unrewritten too) [1]"]
    assert "1 fail (1 unrewritten too)" in text
    # Staged the same way, the unrewritten build may share a staging defect: not a pass.
    assert exit_code(cells) == 2
    assert read_cells(tmp_path)[0].vanilla_fails


def test_markdown_keeps_a_reason_in_its_cell(tmp_path: Path) -> None:
    # A `|` would end a table cell and a `<` open an HTML tag in GitHub's summary.
    cells = [cell("e1000e", K61, "fail", "expected ';' before '<' | token"),
             cell("e1000e", K612, "pass")]
    write_outputs(cells, tmp_path, COMMAND, DATE)
    text = (tmp_path / "matrix.md").read_text()
    assert table(text)[2] == ["e1000e", "**FAIL** [1]", "pass"]
    assert f"1. e1000e on {K61}: expected ';' before '&lt;' | token" in text


# -- writing atomically ------------------------------------------------------------------

def fail_on(monkeypatch: pytest.MonkeyPatch, name: str, call: int,
            exception: BaseException) -> None:
    """Make os.`name` fail on its `call`-th call (from 1), and work otherwise."""
    real = getattr(os, name)
    calls = 0

    def fake(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            raise exception
        return real(*args)

    monkeypatch.setattr(os, name, fake)


@pytest.mark.parametrize("exception", [OSError(28, "No space left on device"),
                                       KeyboardInterrupt()], ids=["ENOSPC", "ctrl-c"])
@pytest.mark.parametrize(("function", "call"), [
    ("fsync", 1), ("fsync", 2), ("fsync", 3),  # a file written whole but not yet synced
    ("replace", 1),
])
def test_a_failed_write_leaves_the_older_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str, call: int,
        exception: BaseException) -> None:
    older = "older matrix.json\n"
    (tmp_path / "matrix.json").write_text(older)
    fail_on(monkeypatch, function, call, exception)
    with pytest.raises(type(exception)):
        write_outputs(sample_cells(), tmp_path, COMMAND, DATE)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["matrix.json"]
    assert (tmp_path / "matrix.json").read_text() == older


def test_a_late_failure_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The third replace (matrix.json) fails: the reports before it are new, matrix.json
    # is still the older one, and no temporary file is left.
    (tmp_path / "matrix.json").write_text("older\n")
    fail_on(monkeypatch, "replace", 3, OSError(5, "Input/output error"))
    with pytest.raises(OSError, match="Input/output"):
        write_outputs(sample_cells(), tmp_path, COMMAND, DATE)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["junit.xml", "matrix.json", "matrix.md"]
    assert (tmp_path / "matrix.json").read_text() == "older\n"


# -- the GitHub Actions workflow ---------------------------------------------------------

@pytest.mark.parametrize("lab", [False, True])
def test_workflow_has_a_job_per_kernel(lab: bool) -> None:
    workflow = emit_github_actions(KERNELS, ["e1000e", "igb"], lab=lab)
    include = re.findall(r'^ {10}- kernel: (".*")\n {12}suite: (".*")$', workflow, re.M)
    assert [(json.loads(k), json.loads(s)) for k, s in include] == KERNELS
    assert re.search(r"^ {6}fail-fast: false$", workflow, re.M)
    assert re.findall(r"--driver (\S+)", workflow) == ["e1000e", "igb"]
    assert ("--lab" in workflow) == lab
    assert "runs-on: ubuntu-latest" in workflow
    assert "key: systems-${{ matrix.suite }}-${{ hashFiles('suites/*.toml') }}" in workflow


@pytest.mark.parametrize(("kernels", "drivers"), [
    ([('6.1.0"; rm -rf ~; "', "bookworm")], ["e1000e"]),
    ([("6.1.0-56-amd64", "bookworm\n  evil: 1")], ["e1000e"]),
    ([("6.1.0-56-amd64", "bookworm")], ["e1000e && curl x"]),
    ([], ["e1000e"]),
    ([("6.1.0-56-amd64", "bookworm")], []),
])
def test_workflow_refuses_what_it_cannot_quote(
        kernels: list[tuple[str, str]], drivers: list[str]) -> None:
    with pytest.raises(UserError):
        emit_github_actions(kernels, drivers, lab=False)

