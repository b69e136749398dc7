"""Scan and patch whole source trees: walk, fan out to workers, write the output atomically.

`scan_tree` reports every site under a path; `patch_tree` writes a rewritten copy of a tree
with `omatic.patch` and `omatic-report.json` beside it. The source tree is only read. The
output directory appears whole or not at all: it is built in a temporary directory next to
it and renamed into place.

Most files of a driver tree never mention an entry point, so each worker first searches a
file's bytes with one regular expression and parses only the files that match.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omatic import __version__
from omatic.build.rewrite import FileResult, Rewriter, Site
from omatic.cache import made_dirs
from omatic.errors import OutputError, OutputExistsError, OutputNotDirError, PathError
from omatic.rules import Rule

C_SUFFIXES = (".c", ".h")
PATCH_NAME = "omatic.patch"
REPORT_NAME = "omatic-report.json"
#: Below this many files, forking workers costs more than it saves.
_PARALLEL_THRESHOLD = 200


@dataclass
class TreeReport:
    """The outcome of scanning (or patching) one tree."""

    root: Path
    #: Files scanned (C sources and headers that could be read).
    scanned: int = 0
    #: Per-file results, only for files with sites or problems, sorted by path.
    files: list[FileResult] = field(default_factory=list)
    #: Files that could not be scanned: {"file": ..., "error": ...}.
    problems: list[dict[str, str]] = field(default_factory=list)
    #: Where the rewritten tree went (patch only).
    out: Path | None = None

    @property
    def sites(self) -> list[Site]:
        return [s for f in self.files for s in f.sites]

    def totals(self) -> dict[str, Any]:
        sites = self.sites
        return {
            "files_scanned": self.scanned,
            "files_with_sites": sum(1 for f in self.files if f.sites),
            "files_rewritten": sum(1 for f in self.files if f.status == "rewritten"),
            "files_refused": sum(1 for f in self.files if f.status == "refused"),
            "sites": len(sites),
            "by_action": dict(sorted(Counter(s.action for s in sites).items())),
            "by_callee": dict(sorted(Counter(s.callee for s in sites).items())),
            "by_context": dict(sorted(Counter(s.context for s in sites).items())),
            "problems": len(self.problems),
        }

    def to_json(self, command: str) -> dict[str, Any]:
        """The report's stable JSON form."""
        out: dict[str, Any] = {
            "tool": "pfq-omatic", "version": __version__, "command": command,
            "root": str(self.root), "totals": self.totals(),
            "sites": [s.to_json() for s in self.sites],
            "problems": self.problems,
        }
        if command == "patch":
            out["out"] = str(self.out)
            out["patch"] = PATCH_NAME
            out["files"] = [f.to_json() for f in self.files if f.status != "unchanged"]
        return out


def _check_root(path: Path) -> Path:
    try:
        st = path.stat()
    except OSError as err:
        why = "symbolic link loop" if err.errno == errno.ELOOP else (err.strerror or str(err))
        raise PathError(why.lower() if err.errno == errno.ENOENT else why, path=path) from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise PathError("neither a directory nor a regular file", path=path)
    return path


def collect_sources(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    """C files under `root` (relative, '/'-separated, sorted) and the ones left out, with why.

    Symbolic links are not followed (a link may point outside the tree or into a loop);
    only regular files are read.
    """
    _check_root(root)
    if root.is_file():
        return ([root.name] if root.name.endswith(C_SUFFIXES) else []), []
    found: list[str] = []
    problems: list[dict[str, str]] = []

    def walk_error(err: OSError) -> None:
        rel = os.path.relpath(err.filename, root) if err.filename else "."
        problems.append({"file": rel, "error": err.strerror or str(err)})

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(C_SUFFIXES):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                problems.append({"file": rel, "error": "symbolic link, not followed"})
            elif not stat.S_ISREG(mode):
                problems.append({"file": rel, "error": "not a regular file"})
            else:
                found.append(rel)
    return found, problems


# Per-process state of the workers: built once by _init, used by _process.
_state: dict[str, Any] = {}


def _init(rules: list[Rule], root: Path, out: Path | None) -> None:
    _state.update(rewriter=Rewriter(rules), root=root, out=out)


def _process(rel: str) -> FileResult | None:
    """Scan one file, or rewrite it and write the result under the output directory.

    Returns None when the file has nothing to say. Writing here, in the worker that has
    the bytes at hand, spares reading every file twice.
    """
    root: Path = _state["root"]
    out: Path | None = _state["out"]
    path = root / rel if root.is_dir() else root
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except OSError as err:
        return FileResult(file=rel, status="error", reason=err.strerror or str(err))
    if b"\0" in data:
        result = FileResult(file=rel, status="error", reason="binary file (NUL bytes), not C")
    elif out is None:
        result = FileResult(file=rel, sites=_state["rewriter"].scan(data, rel))
    else:
        result = _state["rewriter"].rewrite(data, rel)
    if out is not None:
        fd = os.open(out / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(result.new_data if result.new_data is not None else data)
            os.fchmod(fd, stat.S_IMODE(mode))
        result.new_data = None  # written; not worth sending back to the parent
    return result if result.sites or result.status != "unchanged" else None


def _run(rels: list[str], rules: list[Rule], root: Path, out: Path | None,
         jobs: int | None) -> list[FileResult]:
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1 or len(rels) < _PARALLEL_THRESHOLD:
        _init(rules, root, out)
        results: Iterable[FileResult | None] = map(_process, rels)
        return [r for r in results if r is not None]
    # forkserver, not fork: the matrix runs builds on threads, and a child forked while
    # another thread holds a lock (the allocator's, an import or I/O lock) waits on it
    # forever. The server is forked once, early and single-threaded, and forks the rest.
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(jobs, initializer=_init, initargs=(rules, root, out)) as pool:
        return [r for r in pool.imap_unordered(_process, rels, chunksize=16) if r is not None]


def _report(root: Path, rels: list[str], problems: list[dict[str, str]],
            results: list[FileResult]) -> TreeReport:
    errors = [r for r in results if r.status == "error"]
    problems = problems + [{"file": r.file, "error": r.reason} for r in errors]
    files = sorted((r for r in results if r.status != "error"), key=lambda r: r.file)
    return TreeReport(root=root, scanned=len(rels) - len(errors), files=files,
                      problems=sorted(problems, key=lambda p: p["file"]))


def scan_tree(root: Path, rules: list[Rule], jobs: int | None = None) -> TreeReport:
    """Every site in the C files under `root` (a directory or one file)."""
    rels, problems = collect_sources(root)
    if not rels and not problems:
        raise PathError("no C source (.c, .h) found", path=root)
    return _report(root, rels, problems, _run(rels, rules, root, None, jobs))


def _check_out(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or o.is_relative_to(s):
        raise PathError(f"output directory must be outside the source tree {src}", path=out)
    if s.is_relative_to(o):
        raise PathError(f"output directory must not contain the source tree {src}", path=out)
    if out.exists() and not out.is_dir() and not out.is_symlink():
        raise OutputNotDirError(path=out)
    if out.is_symlink() or (out.exists() and any(out.iterdir())):
        raise OutputExistsError(path=out)


def patch_tree(src: Path, out: Path, rules: list[Rule], jobs: int | None = None) -> TreeReport:
    """Write a rewritten copy of `src` to `out`, with the diff and the report beside it."""
    _check_root(src)
    if not src.is_dir():
        raise PathError("not a directory", path=src)
    _check_out(src, out)
    rels, problems = collect_sources(src)
    if not rels and not problems:
        raise PathError("no C source (.c, .h) found", path=src)
    # A run that fails leaves neither the folders it made nor its temporary one.
    try:
        with made_dirs(out.parent):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
            try:
                _copy_tree(src, tmp, set(rels), problems)
                report = _report(src, rels, problems, _run(rels, rules, src, tmp, jobs))
                report.out = out
                (tmp / PATCH_NAME).write_bytes(b"".join(f.diff for f in report.files))
                (tmp / REPORT_NAME).write_text(json.dumps(report.to_json("patch"), indent=1)
                                               + "\n")
                tmp.chmod(0o755)
                os.replace(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as err:
        # A read-only or full disk, a file where a folder goes: the user's to fix.
        raise OutputError.of(err, out.parent) from None
    return report


def _copy_tree(src: Path, dst: Path, skip: set[str], problems: list[dict[str, str]]) -> None:
    """Copy `src` into the existing `dst`, links as links, except the files in `skip` (the
    workers write those); files that cannot be copied are left out and added to `problems`."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = os.path.relpath(folder, src).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        return {n for n in names if prefix + n in skip}

    def copy(s: str, d: str) -> None:
        try:
            shutil.copy2(s, d)
        except (OSError, shutil.SpecialFileError) as err:
            problems.append({"file": os.path.relpath(s, src),
                             "error": f"not copied: {getattr(err, 'strerror', None) or err}"})

    shutil.copytree(src, dst, symlinks=True, ignore=ignore, copy_function=copy,
                    dirs_exist_ok=True)
