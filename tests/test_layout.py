"""The house's rules, read from the code (omatic.imports): folders import one way and no
module imports itself back; pfq/ and what the guests run use the standard library only;
DKMS's check ships with what it imports; every module imports; a wheel of the package runs.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from omatic import imports
from omatic.lab.guestpy import guest_imports

unit = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "omatic" / "templates"
#: The rooms of the house from the top down: each imports only rooms after it. "base" is
#: the modules at the top of omatic/; pfq/ stands just above it (it imports only errors).
ROOMS = ("cli", "matrix", "lab", "build", "pcap", "verify", "kernels", "pfq", "base")
#: The Debian package of each third-party module DKMS's check may import.
DEBIAN_PACKAGES = {"elftools": "python3-pyelftools", "zstandard": "python3-zstandard",
                   "asn1crypto": "python3-asn1crypto", "cryptography": "python3-cryptography"}


def room(module: str) -> str:
    parts = module.split(".")
    if parts[1:2] in (["cli"], ["__main__"]):
        return "cli"
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS):
        return parts[1]
    return "base"


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@unit
def test_folders_import_one_way() -> None:
    rank = {name: level for level, name in enumerate(ROOMS)}
    upward = sorted(f"{m} -> {i}" for m, targets in imports.graph().items() for i in targets
                    if rank[room(i)] < rank[room(m)])
    assert upward == []


@unit
def test_no_module_imports_itself_back() -> None:
    assert imports.circles(imports.graph()) == []


@unit
def test_a_circle_and_an_import_up_are_seen(tmp_path: Path) -> None:
    """The two rules above fail on a package that breaks them."""
    package = _write(tmp_path / "omatic", {
        "__init__.py": "", "errors.py": "from omatic.kernels import find\n",
        "kernels/__init__.py": "", "kernels/find.py": "def f():\n    import omatic.errors\n"})
    graph = imports.graph(package)
    assert imports.circles(graph) == [["omatic.errors", "omatic.kernels.find"]]
    assert "omatic.kernels.find" in graph["omatic.errors"]
    assert room("omatic.errors") == "base" and room("omatic.kernels.find") == "kernels"


@unit
def test_pfq_imports_the_standard_library_and_errors_only() -> None:
    modules = [m for m in imports.all_modules() if room(m) == "pfq"] + ["omatic.errors"]
    allowed = {"omatic", "omatic.errors", "omatic.pfq"}
    own = {i for m in modules for i in imports.imports_of(m) if i.startswith("omatic")}
    assert sorted(i for i in own if i not in allowed and not i.startswith("omatic.pfq.")) == []
    assert imports.not_standard(imports.outside(modules)) == {}


def _guest_runs() -> dict[str, list[str]]:
    return {t.name: guest_imports(t.read_text()) for t in sorted(TEMPLATES.glob("*init*.j2"))}


@unit
def test_what_the_guests_run_is_read_from_their_init() -> None:
    runs = _guest_runs()
    assert {"omatic.lab.groupcheck", "omatic.lab.safetycheck",
            "omatic.cli"} <= set(runs["hooklab-init.sh.j2"])
    assert "omatic.cli" in runs["lab-init.sh.j2"]


@unit
def test_what_the_guests_run_imports_the_standard_library_only() -> None:
    for template, entries in _guest_runs().items():
        own = [e for e in entries if e.startswith("omatic")]
        reached = imports.reach(own, top_only=True)
        assert "omatic.pfq.capture" in reached, template
        assert imports.not_standard(imports.outside(reached, top_only=True)) == {}, template


@unit
def test_a_guest_module_importing_a_package_is_seen(tmp_path: Path) -> None:
    package = _write(tmp_path / "omatic", {
        "__init__.py": "", "check.py": "import json\nfrom omatic import helper\n",
        "helper.py": "import jinja2\n\ndef f():\n    import rich\n"})
    top = imports.reach(["omatic.check"], top_only=True, package_dir=package)
    assert top == {"omatic", "omatic.check", "omatic.helper"}
    assert imports.not_standard(imports.outside(top, top_only=True, package_dir=package)) \
        == {"jinja2": {"omatic.helper"}}
    assert set(imports.not_standard(imports.outside(top, package_dir=package))) \
        == {"jinja2", "rich"}


@unit
def test_dkms_check_ships_what_it_imports_and_depends_on_the_rest(tmp_path: Path) -> None:
    from omatic.build.dkms import CHECK_ENTRY, _copy_check
    from omatic.templates import render

    reached = imports.reach([CHECK_ENTRY])
    needs = imports.not_standard(imports.outside(reached))
    assert set(needs) <= set(DEBIAN_PACKAGES), needs
    control = render("debian/control.j2", deb_package="p",
                     tree={"maintainer": "m", "drivers": [], "series": [], "version": "0"})
    depends = set(re.findall(r"python3-[\w-]+", control))
    assert {DEBIAN_PACKAGES[name] for name in needs} <= depends

    _copy_check(tmp_path)
    shipped = {p.relative_to(tmp_path / "check") for p in (tmp_path / "check").rglob("*.py")}
    assert shipped == set(imports.files(reached))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "check")}
    run = subprocess.run([sys.executable, "-c", f"import {CHECK_ENTRY} as c; print(c.__file__)"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).is_relative_to(tmp_path / "check")


@unit
def test_every_module_imports() -> None:
    for name in imports.all_modules():
        if name != "omatic.__main__":  # it runs the command line
            importlib.import_module(name)


@unit
def test_each_folder_says_what_it_owns() -> None:
    import ast

    for init in sorted(imports.PACKAGE_DIR.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 10, init


@unit
def test_a_wheel_of_the_package_runs_its_help_and_holds_its_data(tmp_path: Path) -> None:
    """The wheel is built from a copy (the checkout is not written to), installed into a
    new venv without its dependencies, which come from this venv's site-packages."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "omatic", source / "omatic",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(ROOT) for p in (ROOT / "omatic").rglob("*")
            if p.is_file() and p.suffix in (".j2", ".sh")]
    assert {str(p) for p in data} <= names
    assert {str(p) for p in imports.files(imports.all_modules())} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": site}
    run = subprocess.run([str(python), "-m", "omatic", "--help"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "usage: pfq-omatic" in run.stdout
    code = ("import omatic, omatic.templates as t, omatic.kernels.system as s; "
            "print(omatic.__file__); print(s.ENTER_SCRIPT.is_file()); "
            "print('KVER' in t.render('dkms-Makefile.j2', tree={'version': '0'}))")
    run = subprocess.run([str(python), "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 0, run.stderr
    where, script, rendered = run.stdout.split()
    assert Path(where).is_relative_to(venv) and script == "True" and rendered == "True"


@unit
def test_the_summary_counts_folders_the_longest_chain_and_circles(tmp_path: Path) -> None:
    package = _write(tmp_path / "omatic", {
        "__init__.py": "", "cli.py": "from omatic.lab import vm\n", "errors.py": "",
        "lab/__init__.py": "", "lab/vm.py": "import omatic.errors\n"})
    assert imports.summary(package).splitlines() == [
        "4 modules: (top) 2, lab 2",
        "longest import chain, 3 modules: omatic.cli -> omatic.lab.vm -> omatic.errors",
        "circles: none"]
    (package / "errors.py").write_text("from omatic import cli\n")
    imports._read.cache_clear()
    assert imports.summary(package).splitlines()[2] == \
        "circles: omatic.cli <-> omatic.errors <-> omatic.lab.vm"


@unit
def test_the_summary_command_refuses_a_folder_without_a_package(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert imports.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert imports.main([]) == 0
    assert "circles: none" in capsys.readouterr().out
