"""Driver sources: find an in-tree module's files and stage them for a build.

Sources come from Debian's linux-source tarball of the kernel's series (the default), an
unpacked kernel tree (`--kernel-tree`), or an out-of-tree driver directory (`--source`).
Any in-tree module is found by name in the Kbuild Makefiles (`obj-$(CONFIG_X) += name.o`,
`name-y`, `name-objs`); no manifest is needed.

A tarball is read once: drivers/net whole, and every Makefile and Kbuild under drivers/,
go to a cache keyed by the tarball's hash; a driver elsewhere in drivers/ is extracted on
demand. Extraction refuses members that would land outside the cache (absolute paths,
`..`, links pointing out). Staging copies only the driver's directory (or, when its
Makefile builds other modules too, the module's own sources with a generated Kbuild) plus
the files it includes by relative path, transitively.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from omatic.cache import cache_root, file_lock
from omatic.errors import PathError, UserError
from omatic.templates import render

#: What a first read of a tarball keeps: drivers/net whole, and the Kbuild files of drivers/.
_FIRST_READ = re.compile(r"drivers/(?:net/.*|.*/(?:Makefile|Kbuild))")
_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*(?:"([^"]+)"|<([^>]+)>)', re.MULTILINE)
_ASSIGN = re.compile(r"^([A-Za-z0-9_.$()-]+?)\s*(\+=|:=|\?=|=)\s*(.*)$")
_CONFIG_REF = re.compile(r"^\$\((CONFIG_\w+)\)$")
#: The version of what index_modules finds, in the name of its memo in the cache: a
#: parser that finds more (every config of a module, objects named through variables, the
#: lines a generated Kbuild keeps) must not read an older memo.
INDEX_FORMAT = 4
_INCLUDE_FLAG = re.compile(r"(?:^|\s)-I\s*(\S+)")


class UnknownDriverError(UserError):
    template = "unknown driver {name!r} in {where}{hint}"


class TarballError(UserError):
    template = "{path}: {message}"


# -- Makefiles --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModuleDef:
    """Where Kbuild defines one module."""

    #: Module name as Kbuild spells it ("e1000e", "virtio_net", "8139too").
    name: str
    #: Directory of the defining Makefile, relative to the kernel tree root.
    dir: str
    #: The CONFIG_ symbol that selects it ("" for obj-m); the first of `configs`.
    config: str
    #: Its objects (relative to dir), from name-y / name-objs / name-$(CONFIG_...);
    #: just name.o for a single-file module.
    objects: tuple[str, ...]
    #: True when the Makefile builds this module only, so it can be used as it is.
    alone: bool
    #: The Makefile's lines but its obj- lines (objects, flags, variables, conditionals),
    #: for a generated Kbuild of this module alone.
    lines: tuple[str, ...] = field(default=(), compare=False)
    #: Every CONFIG_ symbol that selects it: 8390.o is built for ne2k-pci, pcnet_cs and more.
    configs: tuple[str, ...] = ()

    def enabled_by(self, config: dict[str, str]) -> str | None:
        """The first of its symbols a kernel's .config sets to y or m, else None."""
        return next((c for c in self.configs or (self.config,) if config.get(c) in ("y", "m")),
                    None)

    def include_dirs(self) -> list[str]:
        """The folders of the kernel tree its Makefile adds to the include path, relative
        to the tree's root: `ccflags-y += -I$(srctree)/$(src)` is the module's own folder.
        In-tree Kbuild finds them under $(srctree), which out of tree is the headers
        package; the build adds them from the staged tree instead."""
        found: list[str] = []
        for line in self.lines:
            lhs = line.split("=", 1)[0]
            if not lhs.startswith(("ccflags", "subdir-ccflags", "CFLAGS_")):
                continue
            for raw in _INCLUDE_FLAG.findall(line.split("=", 1)[-1]):
                path = raw.replace("$(srctree)/", "").replace("$(srctree)", "")
                path = path.replace("$(src)", self.dir).replace("$(obj)", self.dir)
                if "$" in path or path.startswith("/"):
                    continue  # another variable, or the system's: not the tree's
                path = os.path.normpath(path)
                if path.startswith("..") or path in found:
                    continue
                found.append(path)
        return found


def _logical_lines(text: str) -> list[str]:
    """Makefile lines with continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", text)
    return [line.split("#", 1)[0].rstrip() for line in text.splitlines()]


def parse_makefile(text: str, directory: str) -> list[ModuleDef]:
    """The modules a Kbuild Makefile defines."""
    targets: dict[str, list[str]] = {}  # module -> the configs that select it
    others = 0
    composite: dict[str, list[str]] = {}
    # Everything but the obj- lines, in order: what a Kbuild for one of its modules keeps
    # (flags, variables, ifeq blocks: mlx5_core's en/tc_ct.o is only under ifneq).
    kept: list[str] = []
    # Plain variables (liquidio's common-objs, shared by two modules): name -> words.
    variables: dict[str, list[str]] = {}

    def expand(words: list[str], depth: int = 0) -> list[str]:
        out = []
        for word in words:
            ref = re.fullmatch(r"\$\(([A-Za-z0-9_-]+)\)", word)
            if ref and ref[1] in variables and depth < 8:
                out += expand(variables[ref[1]], depth + 1)
            else:
                out.append(word)
        return out

    for line in _logical_lines(text):
        match = _ASSIGN.match(line.strip())
        if (not match or not match[1].startswith("obj-")) and line.strip():
            kept.append(line.rstrip())
        if not match:
            continue
        lhs, op, rhs = match.groups()
        words = rhs.split()
        if lhs.startswith("obj-"):
            suffix = lhs[4:]
            config_ref = _CONFIG_REF.match(suffix)
            config = config_ref[1] if config_ref else ""
            for word in words:
                if word.endswith(".o"):
                    targets.setdefault(word[:-2], []).append(config)
                else:
                    others += 1
            continue
        name, dash, suffix = lhs.rpartition("-")
        if dash and (suffix in ("y", "objs") or _CONFIG_REF.match(suffix)):
            objects = expand(words)
            composite.setdefault(name, []).extend(w for w in objects if w.endswith(".o"))
        # Any name may also serve as a variable ("common-objs" is one, not a module).
        if re.fullmatch(r"[A-Za-z0-9_-]+", lhs):
            variables[lhs] = [*variables.get(lhs, []), *words] if op == "+=" else words
    modules = []
    for name, configs in targets.items():
        objects = composite.get(name) or [f"{name}.o"]
        modules.append(ModuleDef(
            name=name, dir=directory, config=configs[0], objects=tuple(objects),
            configs=tuple(dict.fromkeys(configs)),
            alone=len(targets) == 1 and others == 0, lines=tuple(kept)))
    return modules


def index_modules(tree: Path, under: str = "drivers") -> dict[str, ModuleDef]:
    """Every module defined by the Makefiles (and Kbuild files) under tree/under."""
    found: dict[str, ModuleDef] = {}
    for dirpath, dirnames, filenames in os.walk(tree / under):
        dirnames.sort()
        rel = Path(dirpath).relative_to(tree).as_posix()
        for kbuild in ("Kbuild", "Makefile"):  # Kbuild wins, as in Kbuild itself
            if kbuild in filenames:
                text = (Path(dirpath) / kbuild).read_text(encoding="utf-8", errors="replace")
                for module in parse_makefile(text, rel):
                    found.setdefault(module.name, module)
                break
    return found


def lookup(index: dict[str, ModuleDef], name: str, where: str) -> ModuleDef:
    """The module called `name` ('-' and '_' are the same, as for modprobe)."""
    wanted = name.replace("-", "_")
    for key, module in index.items():
        if key.replace("-", "_") == wanted:
            return module
    near = difflib.get_close_matches(name, list(index), n=3, cutoff=0.7)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise UnknownDriverError(name=name, where=where, hint=hint)


# -- Tarballs ---------------------------------------------------------------------------

def _digest(path: Path) -> str:
    """sha256 of a file, remembered by (size, mtime, inode) so a second build skips it."""
    st = path.stat()
    memo = cache_root() / "digests.json"
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    try:
        known: dict[str, str] = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        known[key] = h.hexdigest()
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}")
        tmp.write_text(json.dumps(known))
        tmp.replace(memo)
    return known[key]


def _admit(member: tarfile.TarInfo, tarball: Path) -> None:
    """Refuse a member that is not a file, folder or link staying inside the target; make
    what is admitted ours, without set-id or world-writable bits.

    This is the check of tarfile's "data" filter, written out: Debian 12's Python 3.11.2
    predates the filter argument.
    """
    name = PurePosixPath(member.name)
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        if member.issym():
            target = name.parent / target
        if target.is_absolute() or ".." in PurePosixPath(os.path.normpath(target)).parts:
            raise TarballError(f"member {member.name!r} refused: link to {member.linkname!r} "
                               "points outside the target folder", path=tarball)
    elif not (member.isreg() or member.isdir()):
        raise TarballError(f"member {member.name!r} refused: not a file, folder or link",
                           path=tarball)
    member.mode &= 0o755
    member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""


def extract(tarball: Path, dest: Path, wanted: re.Pattern[str]) -> int:
    """Extract the members whose path (after the top folder) matches `wanted` into dest.

    xz runs in its own process so decompression and unpacking use both cores. A member
    that would land outside dest is refused (TarballError), as is a corrupt archive.
    Returns the number of members extracted.
    """
    xz = subprocess.Popen(["xz", "-dc", str(tarball)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert xz.stdout is not None
    count = 0
    try:
        with tarfile.open(fileobj=xz.stdout, mode="r|") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise TarballError(f"member {member.name!r} escapes the target folder",
                                       path=tarball)
                inner = "/".join(parts[1:])
                if not inner or not wanted.fullmatch(inner):
                    continue
                member.name = inner
                if member.islnk():
                    member.linkname = "/".join(PurePosixPath(member.linkname).parts[1:])
                _admit(member, tarball)
                archive.extract(member, dest)
                count += 1
    except tarfile.TarError as err:
        raise TarballError(f"corrupt or unreadable tarball: {err}", path=tarball) from None
    finally:
        xz.stdout.close()
        stderr = xz.stderr.read().decode(errors="replace").strip() if xz.stderr else ""
        status = xz.wait()
    # Closing the pipe early may end xz with SIGPIPE; any other failure is the archive's.
    if status != 0 and status != -signal.SIGPIPE and count == 0:
        raise TarballError(f"xz failed: {stderr or 'exit ' + str(status)}", path=tarball)
    return count


class TarballCache:
    """The parts of one source tarball we use, unpacked under the cache."""

    def __init__(self, tarball: Path) -> None:
        if not tarball.is_file():
            raise PathError("source tarball not found; install the Debian package "
                            f"{tarball.name.removesuffix('.tar.xz')}", path=tarball)
        self.tarball = tarball
        self.root = cache_root() / "sources" / _digest(tarball)[:20]
        self.tree = self.root / "tree"

    @property
    def extracted(self) -> bool:
        """Whether the first read of the tarball is in the cache."""
        return (self.root / ".first-read").exists()

    def _ensure(self, marker: str, wanted: re.Pattern[str]) -> None:
        done = self.root / marker
        if done.exists():
            return
        with file_lock(self.root.with_suffix(".lock"),
                       f"waiting for another extraction of {self.tarball.name}"):
            if done.exists():
                return
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=self.root.parent))
            try:
                if self.tree.exists():  # keep what earlier reads extracted
                    shutil.copytree(self.tree, tmp, dirs_exist_ok=True, symlinks=True)
                if extract(self.tarball, tmp, wanted) == 0:
                    raise TarballError("no kernel sources in it", path=self.tarball)
                self.root.mkdir(parents=True, exist_ok=True)
                old = self.root / f".old-{os.getpid()}"
                if self.tree.exists():
                    self.tree.rename(old)
                tmp.rename(self.tree)
                shutil.rmtree(old, ignore_errors=True)
                done.touch()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def index(self) -> dict[str, ModuleDef]:
        self._ensure(".first-read", _FIRST_READ)
        memo = self.root / f"modules-{INDEX_FORMAT}.json"
        if memo.exists():
            raw = json.loads(memo.read_text())
            return {k: ModuleDef(**{**v, "objects": tuple(v["objects"]),
                                    "lines": tuple(v["lines"]),
                                    "configs": tuple(v["configs"])}) for k, v in raw.items()}
        index = index_modules(self.tree)
        memo.write_text(json.dumps({k: dataclasses.asdict(m) for k, m in index.items()}))
        return index

    def tree_for(self, module: ModuleDef) -> Path:
        """The unpacked tree, with the module's directory present."""
        if not (self.tree / module.dir).is_dir() or not any(
                p.suffix == ".c" for p in (self.tree / module.dir).iterdir()):
            marker = ".dir-" + hashlib.sha256(module.dir.encode()).hexdigest()[:12]
            self._ensure(marker, re.compile(re.escape(module.dir) + "/.*"))
        return self.tree


# -- Staging ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DriverSource:
    """A driver's sources staged in a tree of their own, kernel layout kept."""

    #: The module name.
    name: str
    #: Root of the staged tree.
    root: Path
    #: The driver's directory in it (kernel-relative, e.g. drivers/net/ethernet/intel/e1000e).
    dir: str
    #: The CONFIG_ symbol that builds it as a module ("" for an out-of-tree driver).
    config: str
    #: Every staged file, relative to root.
    files: tuple[str, ...]
    #: Where it came from ("tarball", "tree", "dir") and the path.
    origin: str
    origin_path: Path
    #: Folders of the staged tree its Makefile adds to the include path (kernel-relative).
    include_dirs: tuple[str, ...] = ()
    #: Every CONFIG_ symbol that builds it (`config` is the first).
    configs: tuple[str, ...] = ()

    def digest(self) -> str:
        """sha256 over the staged files' names and bytes: the source part of a build key."""
        h = hashlib.sha256()
        for rel in self.files:
            h.update(rel.encode() + b"\0" + (self.root / rel).read_bytes() + b"\0")
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dir": self.dir, "config": self.config,
                "files": len(self.files), "origin": self.origin,
                "origin_path": str(self.origin_path)}


def _includes_closure(tree: Path, start: list[str], include_dirs: Sequence[str] = ()
                      ) -> list[str]:
    """`start` plus every file they include that exists in the tree, looked for as the
    compiler does: #include "..." beside the including file, then in `include_dirs` (the
    -I folders of the Makefile, kernel-relative); #include <...> in `include_dirs` only."""
    seen: dict[str, None] = dict.fromkeys(start)
    queue = list(start)
    root = tree.resolve()
    while queue:
        rel = queue.pop()
        path = tree / rel
        if path.suffix not in (".c", ".h", ".S"):
            continue
        for match in _INCLUDE.finditer(path.read_bytes()):
            # "x.h" is looked for beside the file first; <x.h> only in the -I folders
            # (mlx5_core's <steering/hws/fs_hws.h>), else it is the kernel's own.
            quoted = match[1] is not None
            name = os.fsdecode(match[1] if quoted else match[2])
            beside = (path.parent,) if quoted else ()
            for folder in (*beside, *(tree / d for d in include_dirs)):
                target = (folder / name).resolve()
                if target.is_file() and target.is_relative_to(root):
                    break
            else:
                continue
            found = target.relative_to(root).as_posix()
            if found not in seen:
                seen[found] = None
                queue.append(found)
    return list(seen)


def module_files(tree: Path, module: ModuleDef) -> list[str]:
    """The files `module` is built from, relative to `tree`: its whole directory when its
    Makefile builds it alone, else its objects' sources; with what they include."""
    base = tree / module.dir
    if module.alone:
        start = [p.relative_to(tree).as_posix() for p in sorted(base.rglob("*"))
                 if p.is_file() and not p.is_symlink()]
    else:
        start = []
        for obj in module.objects:
            for suffix in (".c", ".S"):
                candidate = base / (obj[:-2] + suffix)
                if candidate.is_file():
                    start.append(candidate.relative_to(tree).as_posix())
    folders = [d for d in module.include_dirs() if (tree / d).is_dir()
               and (tree / d).resolve().is_relative_to(tree.resolve())]
    return _includes_closure(tree, start, folders)


def stage(tree: Path, module: ModuleDef, dest: Path, origin: str,
          origin_path: Path) -> DriverSource:
    """Copy what `module` needs from `tree` into `dest` (which must not exist)."""
    files = module_files(tree, module)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / rel, target)
    if not module.alone:
        kbuild = dest / module.dir / "Kbuild"
        kbuild.write_text(render("Kbuild.j2", module=module))
        files.append(kbuild.relative_to(dest).as_posix())
    return DriverSource(name=module.name, root=dest, dir=module.dir, config=module.config,
                        files=tuple(sorted(files)), origin=origin, origin_path=origin_path,
                        include_dirs=tuple(d for d in module.include_dirs()
                                           if (dest / d).is_dir()),
                        configs=module.configs)


def stage_from_tarball(tarball: Path, name: str, dest: Path) -> DriverSource:
    cache = TarballCache(tarball)
    module = lookup(cache.index(), name, tarball.name)
    return stage(cache.tree_for(module), module, dest, "tarball", tarball)


def stage_from_tree(tree: Path, name: str, dest: Path) -> DriverSource:
    if not (tree / "drivers").is_dir():
        raise PathError("not a kernel source tree (no drivers/ folder)", path=tree)
    module = lookup(index_modules(tree), name, str(tree))
    return stage(tree, module, dest, "tree", tree)


def stage_from_dir(directory: Path, name: str, dest: Path) -> DriverSource:
    """An out-of-tree driver: its folder as it is, built with its own Makefile/Kbuild."""
    if not directory.is_dir():
        raise PathError("not a directory", path=directory)
    if not any((directory / f).is_file() for f in ("Kbuild", "Makefile")):
        raise PathError("no Makefile or Kbuild: not a driver directory", path=directory)
    shutil.copytree(directory, dest / "driver", symlinks=True)
    files = [p.relative_to(dest).as_posix() for p in sorted((dest / "driver").rglob("*"))
             if p.is_file()]
    return DriverSource(name=name, root=dest, dir="driver", config="", files=tuple(files),
                        origin="dir", origin_path=directory)
