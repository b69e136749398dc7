"""The guests' Python: this machine's interpreter and just what a list of imports loads."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from omatic.errors import InfraError
from omatic.lab.guestpy import PACKAGE_DIR, PACKAGE_ROOT, module_files, stage_python

unit = pytest.mark.unit


def _run_staged(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    """The staged interpreter, finding its standard library under `root` (the prefix is
    found from where the executable is), with nothing of this machine's on its path."""
    env = {"PYTHONPATH": str(root / PACKAGE_DIR.lstrip("/")), "PATH": os.environ["PATH"]}
    return subprocess.run([str(root / "usr/bin/python3"), "-S", "-c", code], env=env, cwd=root,
                          capture_output=True, text=True, check=False)


@unit
def test_the_staged_python_imports_the_group_checks_and_nothing_is_missing(
        tmp_path: Path) -> None:
    stage_python(tmp_path, ["runpy", "omatic.lab.groupcheck"], PACKAGE_ROOT)
    run = _run_staged(tmp_path, "import sys, omatic.lab.groupcheck, omatic.pfq.endpoint; "
                                "print(omatic.pfq.endpoint.__file__); print(sys.prefix)")
    assert run.returncode == 0, run.stderr
    pfq_file, prefix = run.stdout.split()
    assert pfq_file == str(tmp_path / PACKAGE_DIR.lstrip("/") / "omatic" / "pfq" / "endpoint.py")
    assert Path(prefix) == tmp_path / "usr"
    # Only what was asked for: a module nobody imported is not there.
    missing = _run_staged(tmp_path, "import tkinter")
    assert "ModuleNotFoundError" in missing.stderr
    # Debian's compiled files came along: the guest does not compile the stdlib.
    assert list((tmp_path / "usr/lib").glob("python3*/__pycache__/*.pyc"))


@unit
def test_an_import_the_interpreter_cannot_do_is_an_infra_error() -> None:
    with pytest.raises(InfraError, match=r"cannot import omatic\.nosuchmodule"):
        module_files(["omatic.nosuchmodule"], PACKAGE_ROOT)

