"""A Python for lab guests: this machine's Debian interpreter and just what it imports;
and programs of this machine (tcpdump) with their shared objects.

The guests of the lab boot an initramfs with busybox. Checks that drive /dev/pfq as a
user would (omatic.pfq.endpoint, `pfq-omatic capture`) run there in Python, so the initramfs gets
Debian's /usr/bin/python3 with the shared objects it links, and the files of the modules
a list of imports loads, found by importing them in that interpreter here (isolated:
no site, no environment, no user folders). Debian byte-compiles its standard library
at install, so the compiled files come along and the guest does not compile under TCG.
Any kernel the lab boots runs this machine's user space: Debian 12's glibc needs 3.2.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from omatic import imports
from omatic.errors import InfraError

#: The interpreter the guests get.
PYTHON = Path("/usr/bin/python3")
#: Where the package goes in the guest; its parent is put on sys.path.
PACKAGE_DIR = "/lib/pfq-omatic"
#: The folder this machine imports the omatic package from.
PACKAGE_ROOT = imports.PACKAGE_DIR.parent

_LIST_FILES = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    importlib.import_module(name)
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path:
        print(path)
"""


#: `python3 ... -m MODULE` in a guest's /init.
_RUN = re.compile(r"\bpython3\b[^\n]*?\s-m\s+([\w.]+)")


def guest_imports(init: str) -> list[str]:
    """What the guest's Python imports to run `init` (a rendered /init): runpy for -m,
    each module the script runs with `python3 -m`, and the modules those run in turn
    (omatic.imports.modules_run: the group checks run the capture command). A package run
    with -m runs its __main__, which cannot be imported without running: its imports
    stand for it. The files staged are then what these imports load (stage_python)."""
    todo = sorted(set(_RUN.findall(init)))
    seen: set[str] = set()
    entries = ["runpy"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        runs = [name]
        if imports.module_file(f"{name}.__main__") is not None:
            runs = sorted(imports.imports_of(f"{name}.__main__", top_only=True))
        entries.extend(runs)
        for module in imports.reach(runs, top_only=True):
            todo.extend(sorted(imports.modules_run(module) - seen))
    return entries


def _elf_needs(binary: Path) -> list[Path]:
    """The shared objects `binary` loads, with the dynamic loader, as ldd says; none for
    a static program (no dynamic segment). Host only: the guest has no elftools."""
    from elftools.elf.elffile import ELFFile

    with binary.open("rb") as f:
        if not any(segment["p_type"] == "PT_DYNAMIC" for segment in ELFFile(f).iter_segments()):
            return []
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise InfraError(f"ldd {binary} failed: {err}") from None
    found = []
    for line in out.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            found.append(Path(match[1]))
    return found


def module_files(imports: Sequence[str], package_root: Path,
                 python: Path = PYTHON) -> list[Path]:
    """The files `python` loads to import `imports` (modules of the standard library or
    of the package under `package_root`)."""
    if not python.is_file():
        raise InfraError(f"{python} is missing; install the Debian package python3")
    run = subprocess.run([str(python), "-I", "-S", "-c", _LIST_FILES, str(package_root),
                          *imports], capture_output=True, text=True, check=False,
                         timeout=60)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise InfraError(f"{python} cannot import {', '.join(imports)}: {last}")
    return sorted({Path(line) for line in run.stdout.splitlines()})


def _copy(source: Path, root: Path, target: str | None = None) -> None:
    dest = root / (target or str(source)).lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, dest, follow_symlinks=True)


def stage_python(root: Path, imports: Sequence[str], package_root: Path = PACKAGE_ROOT,
                 python: Path = PYTHON) -> None:
    """Put the interpreter (as /usr/bin/python3), its shared objects and the files of
    `imports` under `root`, an initramfs being staged; the package's own files go under
    PACKAGE_DIR. In the guest: `PYTHONPATH=PACKAGE_DIR python3 -S -m omatic.<module>`."""
    interpreter = python.resolve()
    tag = _cache_tag(python)
    _copy(interpreter, root, "/usr/bin/python3")
    for lib in _elf_needs(interpreter):
        _copy(lib, root)
    package = package_root.resolve()
    for path in module_files(imports, package, python):
        if path.is_relative_to(package):
            _copy(path, root, f"{PACKAGE_DIR}/{path.relative_to(package)}")
            # A package's __main__.py is never imported, but -m runs it.
            main = path.parent / "__main__.py"
            if path.name == "__init__.py" and main.is_file():
                _copy(main, root, f"{PACKAGE_DIR}/{main.relative_to(package)}")
            continue
        _copy(path, root)
        if path.suffix == ".so":
            for lib in _elf_needs(path):
                _copy(lib, root)
            continue
        compiled = path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
        if compiled.is_file():
            _copy(compiled, root)


def stage_program(root: Path, program: Path) -> None:
    """Put a program of this machine (tcpdump) and the shared objects it links under
    `root`, at the same paths."""
    if not program.is_file():
        raise InfraError(f"{program} is missing; `make setup` installs it")
    _copy(program, root)
    for lib in _elf_needs(program):
        _copy(lib, root)


def stage_library(root: Path, libdir: Path) -> None:
    """Put a folder of shared objects (a libpcap of `pfq-omatic pcap`: the file, its
    SONAME link) under `root` at the same path, with what they link."""
    for path in sorted(libdir.iterdir()):
        if path.is_symlink():
            target = root / path.absolute().relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(path))
        else:
            stage_program(root, path)


def _cache_tag(python: Path) -> str:
    """cpython-311 and the like: the tag of the interpreter's compiled files."""
    run = subprocess.run([str(python), "-I", "-S", "-c",
                          "import sys; print(sys.implementation.cache_tag)"],
                         capture_output=True, text=True, check=True, timeout=30)
    return run.stdout.strip()
