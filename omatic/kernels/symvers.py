"""Module.symvers: what a kernel (or one module's build) exports, each symbol with its CRC,
its module, its export type and its namespace."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omatic.errors import BuildError, PathError


@dataclass(frozen=True)
class SymversEntry:
    #: Symbol name.
    name: str
    #: Its CRC (0 when the kernel has no CONFIG_MODVERSIONS).
    crc: int
    #: The module that exports it ("vmlinux" or a path without .ko, e.g. "/tmp/x/pfq").
    module: str
    #: "EXPORT_SYMBOL" or "EXPORT_SYMBOL_GPL".
    export: str
    #: Symbol namespace, or "".
    namespace: str = ""



def read_symvers(path: Path) -> dict[str, SymversEntry]:
    """Parse a Module.symvers: `crc<TAB>symbol<TAB>module<TAB>export type<TAB>namespace`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PathError(err.strerror or str(err), path=path) from None
    except UnicodeDecodeError as err:
        raise BuildError(f"{path}: not a Module.symvers: {err}") from None
    entries: dict[str, SymversEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) not in (4, 5):
            raise BuildError(f"{path}:{number}: expected 4 or 5 tab-separated fields")
        try:
            crc = int(fields[0], 16)
        except ValueError:
            raise BuildError(f"{path}:{number}: bad CRC {fields[0]!r}") from None
        entry = SymversEntry(name=fields[1], crc=crc, module=fields[2], export=fields[3],
                             namespace=fields[4] if len(fields) == 5 else "")
        entries[entry.name] = entry
    return entries
