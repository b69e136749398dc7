"""pfq-omatic matrix: cells of real builds, their statuses, reuse and the reports."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omatic.cli import main
from omatic.data import PROJECT_ROOT
from omatic.kernels.archive import available_kernels, matrix_kernels
from omatic.kernels.kernel import Kernel
from omatic.matrix.report import emit_github_actions, read_cells
from omatic.matrix.run import (
    HOOKS_ROW,
    TOOL_INPUTS,
    KnownFailure,
    MatrixRun,
    load_known_failures,
)
from omatic.versions import version_key

kbuild = pytest.mark.kbuild
unit = pytest.mark.unit


@kbuild
def test_a_matrix_passes_skips_and_reuses_its_cells(tmp_path: Path) -> None:
    out = tmp_path / "m"
    known = tmp_path / "known.toml"
    known.write_text('[[failure]]\ndriver = "no_*"\nkernel = "6.*"\nreason = "not a driver"\n')
    argv = ["matrix", "--driver", "e1000e", "--driver", "no_such_nic", "--kernel", "6.1",
            "--out", str(out), "--known-failures", str(known)]
    text = io.StringIO()
    assert main(argv, out=text) == 0, text.getvalue()
    cells = {c.driver: c for c in read_cells(out)}
    assert cells["e1000e"].status == "pass"
    assert (out / cells["e1000e"].log).read_text().startswith("$ pfq-omatic build e1000e")
    # A kernel without that driver is a skip with the reason, not a failure.
    assert cells["no_such_nic"].status == "skip"
    assert "unknown driver 'no_such_nic'" in cells["no_such_nic"].reason
    assert cells["e1000e"].reproducer.startswith("pfq-omatic build e1000e --kernel 6.1.")
    assert "| e1000e | pass |" in (out / "matrix.md").read_text()
    assert 'testsuite' in (out / "junit.xml").read_text()
    # Unchanged: nothing is redone.
    start = time.monotonic()
    text = io.StringIO()
    assert main(argv, out=text) == 0
    assert time.monotonic() - start < 5
    assert text.getvalue().count("(unchanged)") == 2


@kbuild
def test_a_cell_whose_inputs_changed_is_redone(tmp_path: Path) -> None:
    out = tmp_path / "m"
    text = io.StringIO()
    code = main(["matrix", "--driver", "e100", "--kernel", "6.1", "--out", str(out)], out=text)
    assert code == 0
    cell_file = next((out / "cells").glob("*/e100.json"))
    data = json.loads(cell_file.read_text())
    data["key"] = "stale"
    cell_file.write_text(json.dumps(data))
    # A stale key is redone, not reused.
    text = io.StringIO()
    assert main(["matrix", "--driver", "e100", "--kernel", "6.1", "--out", str(out)],
                out=text) == 0
    assert "(unchanged)" not in text.getvalue()


@unit
@pytest.mark.parametrize("name", ["omatic/lab/hooks.py", "omatic/lab/pcapcheck.py",
                                  "omatic/build/pipeline.py", "omatic/templates/lab-init.sh.j2",
                                  "omatic/kernels/enter-system.sh", "libpcap/pcap-pfq.c",
                                  "tests/hookmod/pfq_hooktest.c", "drivers/e1000e.toml"])
def test_a_cells_key_covers_the_code_that_runs_it(name: str) -> None:
    # A cell is reused while its key stands: a change to any code the cell runs must
    # change the key, or a matrix would report results of code no longer there.
    path = PROJECT_ROOT / name
    assert path.is_file()
    assert any(path.resolve() in root.glob(pattern) for root, pattern in TOOL_INPUTS), name


@unit
def test_known_failures_are_read_and_matched(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[[failure]]\ndriver = "ice"\nkernel = "5.10.*"\nreason = "no XDP"\n')
    (rule,) = load_known_failures(path)
    assert rule == KnownFailure("ice", "5.10.*", "no XDP")
    assert rule.matches("ice", "5.10.0-46-amd64") and not rule.matches("ice", "6.1.0-56-amd64")
    path.write_text("[[failure]]\ndriver = 1\n")
    with pytest.raises(Exception, match="not a known-failures file"):
        load_known_failures(path)


@unit
def test_a_bad_known_failures_file_is_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--driver", "e1000e", "--kernel", "6.1", "--out", str(tmp_path / "m"),
                 "--known-failures", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pfq-omatic: error: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.system
def test_every_suite_builds_a_driver_and_the_newest_kernel_proves_it(tmp_path: Path) -> None:
    """CI's slice of `make matrix`: e1000e built and verified on the newest amd64 kernel of
    each series the suites name (a system per suite made for it), and proven in QEMU on
    the newest of them."""
    offered = available_kernels()
    releases = [k.release for k in matrix_kernels(offered) if k.flavor == "amd64"]
    assert {k.suite for k in offered if k.release in releases} == {
        "bullseye", "bookworm", "trixie", "sid"}
    out = tmp_path / "m"
    text = io.StringIO()
    argv = ["matrix", "--driver", "e1000e", "--out", str(out)]
    assert main([*argv, *(a for r in releases for a in ("--kernel", r))], out=text) == 0, \
        text.getvalue()
    cells = read_cells(out)
    assert sorted(c.kernel for c in cells) == sorted(releases)
    assert {c.status for c in cells} == {"pass"}
    newest = max(releases, key=version_key)
    text = io.StringIO()
    assert main(["lab", "e1000e", "--kernel", newest, "--out", str(tmp_path / "lab")],
                out=text) == 0, text.getvalue()
    assert "ok" in text.getvalue().splitlines()[-1]


@unit
def test_hooks_are_a_row_of_their_own_and_drivers_may_differ_per_kernel(tmp_path: Path) -> None:
    k61 = Kernel("6.1.0-56-amd64", tmp_path / "h61")
    k612 = Kernel("6.12.117+deb12-amd64", tmp_path / "h612")
    run = MatrixRun(drivers=["e1000e"], kernels=[k61, k612], out_dir=tmp_path, hooks=True,
                    per_kernel={k612.release: ["e1000e", "thunderbolt_net"]}, workers=2)
    assert run.drivers_of(k61) == ["e1000e", HOOKS_ROW]
    assert run.drivers_of(k612) == ["e1000e", "thunderbolt_net", HOOKS_ROW]
    (argv,) = run.cell_argvs(HOOKS_ROW, k61)
    assert argv[:4] == ["pfq-omatic", "hooks", "--kernel", "6.1.0-56-amd64"]
    assert run.cell_argvs("e1000e", k61)[0][:3] == ["pfq-omatic", "build", "e1000e"]


def _emit(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`pfq-omatic matrix ... --emit github-actions` as a user runs it, in `tmp_path`."""
    return subprocess.run([sys.executable, "-m", "omatic", "matrix", *argv, "--emit",
                           "github-actions"], cwd=tmp_path, capture_output=True, text=True,
                          check=False, timeout=120)


def _schema_errors(workflow: str, tmp_path: Path) -> str:
    """What GitHub's workflow schema (vendored by check-jsonschema) says of `workflow`."""
    path = tmp_path / "pfq.yml"
    path.write_text(workflow)
    run = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"),
                          "--builtin-schema", "vendor.github-workflows", str(path)],
                         capture_output=True, text=True, check=False, timeout=120)
    path.unlink()
    return "" if run.returncode == 0 else run.stdout + run.stderr


@pytest.mark.kbuild
@pytest.mark.parametrize("extra", [("--driver", "e1000e", "--driver", "igb", "--lab"),
                                   ("--drivers", "all", "--hooks")])
def test_emit_prints_the_workflow_and_does_nothing_else(
        tmp_path: Path, extra: tuple[str, ...]) -> None:
    """The documented `matrix ... --emit github-actions > pfq.yml`: stdout is the workflow
    alone (GitHub's schema accepts it), nothing is built and no report is written."""
    run = _emit(tmp_path, "--kernel", "6.1", *extra)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("# Generated by pfq-omatic"), run.stdout[:300]
    assert not list(tmp_path.iterdir()), "the command wrote files"
    assert "pass " not in run.stdout and "wrote " not in run.stdout
    assert not _schema_errors(run.stdout, tmp_path)
    assert ('--drivers all' in run.stdout) == ("all" in extra)
    assert ("--hooks" in run.stdout) == ("--hooks" in extra)
    assert re.findall(r"--driver (\S+)", run.stdout) == [
        extra[i + 1] for i, a in enumerate(extra) if a == "--driver"]


@pytest.mark.unit
def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    workflow = emit_github_actions([("6.1.0-56-amd64", "bookworm")], ["e1000e"], lab=False)
    assert not _schema_errors(workflow, tmp_path)
    assert _schema_errors(workflow.replace("runs-on:", "run-on:"), tmp_path)


@pytest.mark.kbuild
def test_emit_with_json_is_json(tmp_path: Path) -> None:
    run = _emit(tmp_path, "--kernel", "6.1", "--driver", "e1000e", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["workflow"].startswith("# Generated by pfq-omatic")
