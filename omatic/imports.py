"""The package's own import graph, read from its code: which modules of omatic a module
imports (at the top, or inside a function, where a command loads what it needs late),
what a set of modules reaches, and what of the world outside the package that needs.

What is shipped beside pfq.ko for DKMS's check (omatic.build.dkms) is what the check
reaches here, and the rules "the guest's modules import the standard library only" and
"folders import one way" are tested on this graph (tests/test_layout.py).
"""

from __future__ import annotations

import ast
import functools
import itertools
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: The package this reads: the folder holding this file.
PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The file of module `name` (omatic.lab.vm, or omatic.lab for a package's
    __init__.py), or None when the package has no such module."""
    parts = name.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for path in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if path is not None and path.is_file():
            return path
    return None


def all_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every module of the package, packages (their __init__) included, sorted."""
    names = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.append(".".join([package_dir.name, *parts]))
    return sorted(names)


@functools.cache
def _read(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imports_of(name: str, *, top_only: bool = False,
               package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The modules `name` imports, by absolute name: `from omatic.x import y` is omatic.x,
    and omatic.x.y too when y is a module. With `top_only`, only the imports that run
    when the module is imported (not those inside functions or classes)."""
    path = module_file(name, package_dir)
    if path is None:
        raise LookupError(f"no module {name} in {package_dir}")
    tree = _read(path)
    nodes: Iterable[ast.AST] = tree.body if top_only else ast.walk(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".")
                up = here if is_package else here[:-1]
                up = up[:len(up) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                if module_file(child, package_dir) is not None:
                    found.add(child)
    return found


def _own(name: str, package_dir: Path) -> bool:
    return name == package_dir.name or name.startswith(package_dir.name + ".")


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reach(roots: Iterable[str], *, top_only: bool = False,
          package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The package's modules that importing `roots` may load: the roots, what they import,
    and so on, with every package (its __init__) on the way."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or not _own(name, package_dir):
            continue
        if module_file(name, package_dir) is None:
            raise LookupError(f"no module {name} in {package_dir}")
        seen.add(name)
        todo.extend(_parents(name))
        todo.extend(m for m in imports_of(name, top_only=top_only, package_dir=package_dir)
                    if _own(m, package_dir))
    return seen


def outside(modules: Iterable[str], *, top_only: bool = False,
            package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """What `modules` import from outside the package, by top-level name, each with the
    modules that import it."""
    found: dict[str, set[str]] = {}
    for name in modules:
        for imported in imports_of(name, top_only=top_only, package_dir=package_dir):
            if not _own(imported, package_dir) and imported != "__future__":
                found.setdefault(imported.split(".")[0], set()).add(name)
    return found


def not_standard(found: dict[str, set[str]]) -> dict[str, set[str]]:
    """Of `outside`'s answer, what is not the standard library."""
    return {top: who for top, who in found.items() if top not in sys.stdlib_module_names}


def files(modules: Iterable[str], package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files of `modules`, relative to the package's parent folder (omatic/x.py)."""
    out = []
    for name in sorted(modules):
        path = module_file(name, package_dir)
        assert path is not None, name
        out.append(path.relative_to(package_dir.parent))
    return out


def modules_run(name: str, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The modules `name` runs in a new interpreter: each string that follows "-m" in a
    list or tuple written in its code (`[sys.executable, "-m", "omatic", "capture"]`)."""
    path = module_file(name, package_dir)
    if path is None:
        raise LookupError(f"no module {name} in {package_dir}")
    found: set[str] = set()
    for node in ast.walk(_read(path)):
        if isinstance(node, ast.List | ast.Tuple):
            words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            found.update(after for before, after in itertools.pairwise(words)
                         if before == "-m" and isinstance(after, str))
    return found


def graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Every module of the package with the package's modules it imports."""
    modules = set(all_modules(package_dir))
    return {m: imports_of(m, package_dir=package_dir) & modules for m in sorted(modules)}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other round (strongly connected components
    of more than one module, or of one importing itself), each sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for to in sorted(edges[node]):
            if to not in index:
                visit(to)
                low[node] = min(low[node], low[to])
            elif to in stack:
                low[node] = min(low[node], index[to])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                part.append(top)
                if top == node:
                    break
            if len(part) > 1 or node in edges[node]:
                found.append(sorted(part))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports (a module, one it imports, one that imports...), with
    each circle standing as one step."""
    group = {m: m for m in edges}
    for members in circles(edges):
        for m in members:
            group[m] = members[0]
    best: dict[str, list[str]] = {}

    def chain(node: str) -> list[str]:
        if node not in best:
            best[node] = []
            below = [chain(to) for to in sorted(edges[node]) if group[to] != group[node]]
            best[node] = [node, *max(below, key=len, default=[])]
        return best[node]

    return max((chain(m) for m in sorted(edges)), key=len, default=[])


def summary(package_dir: Path = PACKAGE_DIR) -> str:
    """The house in a few lines: modules per folder, the longest chain, the circles."""
    edges = graph(package_dir)
    folders = Counter(m.split(".")[1] if m.count(".") > 1 or module_file(m, package_dir)
                      == package_dir.joinpath(*m.split(".")[1:], "__init__.py") else "(top)"
                      for m in edges if m != package_dir.name)
    lines = [f"{sum(folders.values())} modules: " + ", ".join(f"{folder} {n}"
                                                    for folder, n in sorted(folders.items()))]
    chain = longest_chain(edges)
    lines.append(f"longest import chain, {len(chain)} modules: {' -> '.join(chain)}")
    found = circles(edges)
    lines.append("circles: " + ("; ".join(" <-> ".join(c) for c in found) or "none"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m omatic.imports [PACKAGE_DIR]`: the summary of this package, or of the
    package folder named (another checkout's omatic/)."""
    package_dir = Path(argv[0]).resolve() if argv else PACKAGE_DIR
    if len(argv) > 1 or not (package_dir / "__init__.py").is_file():
        print(f"usage: python -m omatic.imports [PACKAGE_DIR]: {' '.join(argv)} is not one "
              "folder holding a package's __init__.py", file=sys.stderr)
        return 1
    try:
        text = summary(package_dir)
    except (SyntaxError, UnicodeDecodeError, LookupError) as err:
        print(f"python -m omatic.imports: cannot read {package_dir}: {err}", file=sys.stderr)
        return 1
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
