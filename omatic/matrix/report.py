"""What a matrix of drivers by kernels leaves behind, for people, for CI and for the next run.

A run of `pfq-omatic matrix` fills one `Cell` per driver and kernel; this module turns them
into three files of the output folder: `matrix.json` (everything, read back by
`read_cells`), `junit.xml` (a test suite per kernel, for CI's test reports) and `matrix.md`
(a table, drivers by kernels, for a person or GitHub's run summary). A cell's status says whose
fault it is, as KernelCI's KCIDB does; counts add up in the summary. The three files are
replaced together or not at all, so an interrupted run never leaves a half-written report
beside an older one.

It also writes the GitHub Actions workflow that runs the same matrix, a job per kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import io
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import junitparser

from omatic.cache import file_mode
from omatic.errors import PathError, UserError
from omatic.templates import render
from omatic.versions import version_key

#: What became of a cell: `pass`; `fail`, the driver failed to build, verify or prove in
#: the lab; `error`, the infrastructure failed (network, QEMU); `skip`, that kernel does
#: not build that driver.
STATUSES = ("pass", "fail", "error", "skip")
JSON_NAME = "matrix.json"
JUNIT_NAME = "junit.xml"
MARKDOWN_NAME = "matrix.md"
#: Exit code of a matrix with a cell that is not ok (errors.py: a build/infra failure).
FAILED_EXIT = 2

# Names pasted into a workflow: anything else could break out of its YAML or its shell.
_RELEASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]*")
_SUITE_RE = re.compile(r"[a-z0-9][a-z0-9.-]*")
_DRIVER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

#: How each status reads in matrix.md; an expected failure reads `xfail`.
_LABELS = {"pass": "pass", "fail": "**FAIL**", "error": "error", "skip": "skip"}


@dataclass
class Cell:
    """One driver on one kernel: what happened, how long it took, how to do it again."""

    #: The driver's name, as in drivers/: "e1000e".
    driver: str
    #: The kernel release: "6.1.0-56-amd64".
    kernel: str
    #: The Debian suite the kernel comes from: "bookworm", "trixie-backports".
    suite: str
    #: One of STATUSES.
    status: str
    #: How long the cell took, wall clock.
    seconds: float
    #: The cell's log, relative to the matrix output folder.
    log: str
    #: One shell command that does this cell again.
    reproducer: str
    #: Why (for fail, error and skip): one line.
    reason: str = ""
    #: A failure listed in the known-failures file: shown, not fatal.
    expected: bool = False
    #: The cell included a lab run.
    lab: bool = False
    #: A failed build whose driver, staged and built the same way but not rewritten
    #: (`build --vanilla`), fails too: not the rewrite's fault, but possibly the staging's
    #: (mlx5_core's <steering/...> includes were), so still a failure until a build of
    #: the kernel's own tree says otherwise.
    vanilla_fails: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        self.seconds = float(self.seconds)

    @property
    def ok(self) -> bool:
        """Whether this cell lets the matrix pass: pass, skip, or a failure we expected."""
        return self.status in ("pass", "skip") or (self.status == "fail" and self.expected)

    def to_json(self) -> dict[str, Any]:
        return dict(sorted(dataclasses.asdict(self).items()))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        """The cell `to_json` gave; raises ValueError when `data` is not one. Keys it does not
        know are ignored, so an older reader takes a newer matrix.json."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a cell is an object, not {type(data).__name__}")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                if field.default is dataclasses.MISSING:
                    raise ValueError(f"a cell has no {field.name!r}")
                continue
            value = data[field.name]
            if not _holds(str(field.type), value):
                raise ValueError(f"a cell's {field.name!r} is {value!r}")
            values[field.name] = value
        return cls(**values)


def _holds(annotation: str, value: Any) -> bool:
    """Whether `value`, read from JSON, fits a field annotated `annotation`."""
    if annotation == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool}[annotation])


def kernel_order(release: str) -> tuple[tuple[int, ...], str]:
    """Sort key of a kernel release: by its numbers (6.1 before 6.12 before 7.2), then its
    text."""
    return version_key(release), release


def summarize(cells: Sequence[Cell]) -> dict[str, Any]:
    """Cells of each status (they add up to all cells), the expected failures among them,
    and whether the matrix passed."""
    counts: dict[str, Any] = {status: 0 for status in STATUSES}
    for cell in cells:
        counts[cell.status] += 1
    counts["expected"] = sum(1 for c in cells if c.status == "fail" and c.expected)
    counts["vanilla_fails"] = sum(1 for c in cells if c.status == "fail" and c.vanilla_fails)
    counts["ok"] = all(c.ok for c in cells)
    return counts


def exit_code(cells: Sequence[Cell]) -> int:
    """0 when every cell is ok, else 2 (a failure or an error, not a user's mistake)."""
    return 0 if all(c.ok for c in cells) else FAILED_EXIT


# -- the three files ---------------------------------------------------------------------

def write_outputs(cells: Sequence[Cell], out_dir: Path, command: str, date: str) -> None:
    """Write matrix.json, junit.xml and matrix.md into `out_dir`. All three are made first,
    each in a temporary file beside its place; only then do they replace what was there,
    matrix.json last. Whatever goes wrong, no temporary file is left, and until the
    replacing the older files stay as they were."""
    ordered = sorted(cells, key=lambda c: (kernel_order(c.kernel), c.driver))
    document = {"command": command, "date": date, "summary": summarize(ordered),
                "cells": [c.to_json() for c in ordered]}
    # matrix.json last: it is what read_cells and the next run go by.
    contents = {
        JUNIT_NAME: junit_xml(ordered),
        MARKDOWN_NAME: markdown(ordered, command, date).encode(),
        JSON_NAME: (json.dumps(document, indent=1, sort_keys=True) + "\n").encode(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: dict[str, str] = {}
    try:
        for name, data in contents.items():
            staged[name] = _stage(out_dir / name, data)
        for name, tmp in staged.items():
            os.replace(tmp, out_dir / name)
    except BaseException:
        for tmp in staged.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _stage(path: Path, data: bytes) -> str:
    """Write `data` to a new temporary file beside `path`, flushed to disk; its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def read_cells(out_dir: Path) -> list[Cell]:
    """The cells of the matrix.json in `out_dir`."""
    path = out_dir / JSON_NAME
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise PathError("no matrix.json here; run pfq-omatic matrix first", path=out_dir) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PathError(f"cannot read it: {err}", path=path) from None
    if not isinstance(document, dict) or not isinstance(document.get("cells"), list):
        raise PathError("not a matrix.json: no list of cells", path=path)
    try:
        return [Cell.from_json(item) for item in document["cells"]]
    except ValueError as err:
        raise PathError(f"not a matrix.json: {err}", path=path) from None


def junit_xml(cells: Sequence[Cell]) -> bytes:
    """JUnit XML of the cells: a suite per kernel, named by its release, a test case per
    driver. A failure we expected is reported skipped, so CI's report stays green on it."""
    xml = junitparser.JUnitXml("pfq-omatic matrix")
    for kernel in _kernels(cells):
        suite = junitparser.TestSuite(kernel)
        suite.add_property("suite", _suites(cells)[kernel])
        for cell in sorted((c for c in cells if c.kernel == kernel), key=lambda c: c.driver):
            case = junitparser.TestCase(cell.driver, kernel, cell.seconds)
            result = _junit_result(cell)
            if result is not None:
                result.text = f"log: {cell.log}"
                case.result = [result]
            case.system_out = f"{cell.reproducer}\n"
            suite.add_testcase(case)
        xml.add_testsuite(suite)
    xml.update_statistics()  # type: ignore[no-untyped-call]
    buffer = io.BytesIO()
    xml.write(buffer)  # not pretty: junitparser before 4 writes that to a file name only
    return buffer.getvalue()


def _junit_result(cell: Cell
                  ) -> junitparser.Failure | junitparser.Error | junitparser.Skipped | None:
    if cell.status == "fail" and cell.expected:
        return junitparser.Skipped(f"expected failure: {cell.reason}")
    if cell.status == "fail":
        return junitparser.Failure(cell.reason or "failed")
    if cell.status == "error":
        return junitparser.Error(cell.reason or "infrastructure error")
    if cell.status == "skip":
        return junitparser.Skipped(cell.reason or "skipped")
    return None


def markdown(cells: Sequence[Cell], command: str, date: str) -> str:
    """matrix.md: a row per driver, a column per kernel (its release over its suite), a
    numbered note for every cell that says why, and the counts."""
    kernels = _kernels(cells)
    suites = _suites(cells)
    drivers = sorted({c.driver for c in cells})
    by_place = {(c.driver, c.kernel): c for c in cells}
    lines = ["# pfq-omatic matrix", "", f"{_code(command)} on {_text(date)}", ""]
    lines.append(_row(["driver", *(f"{_text(k)}<br>{_text(suites[k])}" for k in kernels)]))
    lines.append(_row(["---"] * (len(kernels) + 1)))
    notes = []
    for driver in drivers:
        row = [_text(driver)]
        for kernel in kernels:
            cell = by_place.get((driver, kernel))
            if cell is None:
                row.append("-")
                continue
            failed = cell.status == "fail"
            label = ("xfail" if failed and cell.expected else
                     "**FAIL** (unrewritten too)" if failed and cell.vanilla_fails else
                     _LABELS[cell.status])
            if cell.reason:
                notes.append(f"{driver} on {kernel}: {cell.reason}")
                label += f" [{len(notes)}]"
            row.append(label)
        lines.append(_row(row))
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"{n}. {_text(note)}" for n, note in enumerate(notes, 1)]
    lines += ["", _summary_line(summarize(cells), len(cells))]
    if len(kernels) > 1:
        lines += ["", "Per kernel:", ""]
        for kernel in kernels:
            mine = [c for c in cells if c.kernel == kernel]
            passed = sum(1 for c in mine if c.status == "pass")
            vanilla = sum(1 for c in mine if c.status == "fail" and c.vanilla_fails)
            also = f"; {vanilla} fail unrewritten too" if vanilla else ""
            lines.append(f"- {_text(kernel)}: {passed} of {len(mine)} pass "
                         f"({100 * passed / len(mine):.1f}%){also}")
    return "\n".join(lines) + "\n"


def _summary_line(summary: dict[str, Any], total: int) -> str:
    notes = [f"{summary['expected']} expected"] if summary["expected"] else []
    if summary["vanilla_fails"]:
        notes.append(f"{summary['vanilla_fails']} unrewritten too")
    expected = f" ({', '.join(notes)})" if notes else ""
    return (f"**{total} cells**: {summary['pass']} pass, {summary['fail']} fail{expected}, "
            f"{summary['error']} error, {summary['skip']} skip: "
            f"{'ok' if summary['ok'] else 'NOT OK'}")


def _kernels(cells: Sequence[Cell]) -> list[str]:
    return sorted({c.kernel for c in cells}, key=kernel_order)


def _suites(cells: Sequence[Cell]) -> dict[str, str]:
    """The suite of each kernel, as its first cell says."""
    suites: dict[str, str] = {}
    for cell in cells:
        suites.setdefault(cell.kernel, cell.suite)
    return suites


def _text(text: str) -> str:
    """`text` on one line, its HTML characters escaped (GitHub renders HTML in Markdown)."""
    return html.escape(" ".join(text.split()), quote=False)


def _row(cells: Sequence[str]) -> str:
    """A table row of Markdown texts (a `|` in them would end the cell)."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _code(text: str) -> str:
    """`text` as Markdown inline code, fenced by more backticks than it holds in a row."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{' '.join(text.split())}{pad}{fence}"


# -- the workflow ------------------------------------------------------------------------

def emit_github_actions(kernels: Sequence[tuple[str, str]], drivers: Sequence[str],
                        lab: bool, hooks: bool = False, all_drivers: bool = False) -> str:
    """A GitHub Actions workflow running the matrix there: a job per kernel (release,
    suite), each building every driver (`all_drivers`: every NIC driver its kernel builds;
    with `lab`, proving them in QEMU; with `hooks`, every hook too), leaving its matrix.md
    in the run's summary and its report and logs as an artifact."""
    if not kernels or not (drivers or all_drivers):
        raise UserError("a workflow needs at least one kernel and one driver")
    for release, suite in kernels:
        if not _RELEASE_RE.fullmatch(release):
            raise UserError(f"{release!r} is not a kernel release")
        if not _SUITE_RE.fullmatch(suite):
            raise UserError(f"{suite!r} is not a Debian suite name")
    for driver in drivers:
        if not _DRIVER_RE.fullmatch(driver):
            raise UserError(f"{driver!r} is not a driver name")
    return render("github-actions.yml.j2", kernels=list(kernels), drivers=list(drivers),
                  lab=lab, hooks=hooks, all_drivers=all_drivers)
