"""Read what a kernel module (.ko) and a Module.symvers say about symbols and versions.

The verify stage checks built modules with these readers instead of trusting the build
log: which symbols a module exports (and under which license), the CRC modpost gave
each export, the CRCs the module expects of what it imports (`__versions`), and its
`.modinfo` (license, vermagic, depends). Everything is read with pyelftools; its
exceptions are turned into omatic errors at this boundary.

Layouts, as of 6.1 and 6.12 (both checked against Debian's builds):
- exports: a symbol `__ksymtab_<name>` in section `__ksymtab` (EXPORT_SYMBOL) or
  `__ksymtab_gpl` (EXPORT_SYMBOL_GPL); since 6.5 modpost writes these into the .mod.c
  ("kbuild: generate KSYMTAB entries by modpost"), so a final .ko looks the same on both;
- export CRCs: a symbol `__crc_<name>` whose 4 bytes live in `__kcrctab(_gpl)` (or, on
  older kernels, an absolute symbol whose value is the CRC);
- `__versions`: an array of `struct modversion_info { unsigned long crc; char name[64 -
  sizeof(unsigned long)]; }`;
- extended modversions (CONFIG_EXTENDED_MODVERSIONS, kernels >= 6.14, for symbol names
  longer than `__versions` can hold): `__version_ext_crcs` is an array of u32 CRCs and
  `__version_ext_names` the names, each NUL-terminated, in the same order. When those
  sections exist the kernel reads them instead of `__versions` (kernel/module/version.c).

Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`, as distributions install them) are
decompressed in memory.
"""

from __future__ import annotations

import gzip
import io
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from zstandard import ZstdDecompressor, ZstdError

from omatic.errors import BuildError, PathError

#: Size of one `struct modversion_info` (include/linux/module.h: MODULE_NAME_LEN is 64).
_MODVERSION_SIZE = 64


@dataclass(frozen=True)
class Export:
    #: Symbol name, e.g. "pfq_netif_rx".
    name: str
    #: True for EXPORT_SYMBOL_GPL (section `__ksymtab_gpl`).
    gpl: bool
    #: CRC modpost computed for it, or None when the module was built without modversions.
    crc: int | None


def find_module(folder: Path, ko: str) -> Path | None:
    """`folder/ko` ("drivers/net/dummy.ko", "pfq.ko") as it is, or compressed as a kernel
    may ship or install it (.xz, .zst, .gz); None when there is none."""
    for suffix in ("", ".xz", ".zst", ".gz"):
        path = folder / (ko + suffix)
        if path.is_file():
            return path
    return None


def _read_bytes(path: Path) -> bytes:
    """The ELF bytes of `path`: .ko as is, .ko.xz, .ko.zst and .ko.gz decompressed."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PathError(err.strerror or str(err), path=path) from None
    try:
        if path.name.endswith(".xz"):
            return lzma.decompress(raw)
        if path.name.endswith(".gz"):
            return gzip.decompress(raw)
        if path.name.endswith(".zst"):
            # decompressobj: kmod's zstd frames may not record the content size.
            return ZstdDecompressor().decompressobj().decompress(raw)
    except (lzma.LZMAError, OSError, EOFError, ZstdError) as err:
        raise BuildError(f"{path}: cannot decompress: {err}") from None
    return raw


def parse_version_ext(crcs: bytes, names: bytes,
                      byteorder: Literal["little", "big"] = "little") -> dict[str, int]:
    """Extended modversions: name -> CRC from `__version_ext_crcs` (u32 each) and
    `__version_ext_names` (NUL-terminated names in the same order).

    modpost writes the names as one C string literal, so the section ends with an extra
    NUL; trailing NULs are padding. Raises BuildError when the sections disagree on the
    number of entries.
    """
    if len(crcs) % 4:
        raise BuildError(f"__version_ext_crcs is {len(crcs)} bytes, not a multiple of 4")
    count = len(crcs) // 4
    if names and not names.endswith(b"\0"):
        raise BuildError("__version_ext_names does not end with a NUL")
    listed = names.rstrip(b"\0").split(b"\0") if names.strip(b"\0") else []
    if len(listed) != count:
        raise BuildError(f"__version_ext_names has {len(listed)} names but "
                         f"__version_ext_crcs {count} CRCs")
    return {name.decode("ascii", errors="replace"):
            int.from_bytes(crcs[4 * i:4 * i + 4], byteorder)
            for i, name in enumerate(listed)}


class KernelModule:
    """One kernel module file, parsed once; raises BuildError if it is not one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = _read_bytes(path)
        #: The module's bytes (decompressed), its appended signature if any included.
        self.data = data
        try:
            self._elf = ELFFile(io.BytesIO(data))
            if self._elf["e_type"] != "ET_REL":
                raise BuildError(f"{path}: not a kernel module (ELF type {self._elf['e_type']})")
            self._symbols = self._read_symbols()
        except ELFError as err:
            raise BuildError(f"{path}: not a valid ELF file: {err}") from None
        self._order: Literal["little", "big"] = "little" if self._elf.little_endian else "big"
        self._word = self._elf.elfclass // 8

    def _read_symbols(self) -> list[tuple[str, Any]]:
        table = self._elf.get_section_by_name(".symtab")
        if not isinstance(table, SymbolTableSection):
            raise BuildError(f"{self.path}: no symbol table")
        return [(sym.name, sym) for sym in table.iter_symbols()]

    def _section_bytes(self, name: str) -> bytes | None:
        try:
            section = self._elf.get_section_by_name(name)
            return None if section is None else bytes(section.data())
        except ELFError as err:
            raise BuildError(f"{self.path}: section {name}: {err}") from None

    def _section_name(self, index: Any) -> str:
        if not isinstance(index, int):
            return str(index)  # SHN_ABS, SHN_UNDEF...
        return str(self._elf.get_section(index).name)

    def modinfo(self) -> dict[str, list[str]]:
        """`.modinfo` as key -> values (a key like "alias" or "depends" can repeat)."""
        data = self._section_bytes(".modinfo")
        info: dict[str, list[str]] = {}
        if data is None:
            return info
        for entry in data.split(b"\0"):
            key, sep, value = entry.decode("utf-8", errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
        return info

    def _crc(self, name: str) -> int | None:
        for sym_name, sym in self._symbols:
            if sym_name != f"__crc_{name}":
                continue
            if sym["st_shndx"] == "SHN_ABS":
                return int(sym["st_value"]) & 0xFFFFFFFF
            data = self._section_bytes(self._section_name(sym["st_shndx"]))
            offset = int(sym["st_value"])
            if data is None or offset + 4 > len(data):
                raise BuildError(f"{self.path}: __crc_{name} points outside its section")
            return int.from_bytes(data[offset:offset + 4], self._order)
        return None

    def exports(self) -> dict[str, Export]:
        """Exported symbols by name, from the `__ksymtab_<name>` markers."""
        found: dict[str, Export] = {}
        for sym_name, sym in self._symbols:
            if not sym_name.startswith("__ksymtab_") or sym_name == "__ksymtab_strings":
                continue
            section = self._section_name(sym["st_shndx"])
            if section not in ("__ksymtab", "__ksymtab_gpl"):
                continue
            name = sym_name.removeprefix("__ksymtab_")
            found[name] = Export(name=name, gpl=section == "__ksymtab_gpl", crc=self._crc(name))
        return found

    def undefined(self) -> set[str]:
        """Symbols the module needs from the kernel or other modules."""
        return {name for name, sym in self._symbols
                if name and sym["st_shndx"] == "SHN_UNDEF"}

    def weak_undefined(self) -> set[str]:
        """Undefined symbols bound weak: the kernel loads the module even if they stay
        unresolved (kernel/module/main.c, simplify_symbols)."""
        return {name for name, sym in self._symbols
                if name and sym["st_shndx"] == "SHN_UNDEF"
                and sym["st_info"]["bind"] == "STB_WEAK"}

    def section_size(self, name: str) -> int | None:
        """sh_size of section `name`, or None when the module has no such section."""
        section = self._elf.get_section_by_name(name)
        return None if section is None else int(section["sh_size"])

    def versions(self) -> dict[str, int]:
        """The CRC the module expects of each symbol it imports: the extended
        modversions sections when present (as the kernel prefers them), else
        `__versions`."""
        ext_crcs = self._section_bytes("__version_ext_crcs")
        if ext_crcs is not None:
            try:
                return parse_version_ext(ext_crcs,
                                         self._section_bytes("__version_ext_names") or b"",
                                         self._order)
            except BuildError as err:
                raise BuildError(f"{self.path}: {err}") from None
        data = self._section_bytes("__versions")
        if data is None:
            return {}
        if len(data) % _MODVERSION_SIZE:
            raise BuildError(f"{self.path}: __versions is {len(data)} bytes, "
                             f"not a multiple of {_MODVERSION_SIZE}")
        found: dict[str, int] = {}
        for start in range(0, len(data), _MODVERSION_SIZE):
            entry = data[start:start + _MODVERSION_SIZE]
            crc = int.from_bytes(entry[:self._word], self._order) & 0xFFFFFFFF
            name = entry[self._word:].split(b"\0", 1)[0].decode("ascii", errors="replace")
            found[name] = crc
        return found
