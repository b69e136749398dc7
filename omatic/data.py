"""Where pfq-omatic's data lives, and the one loader for its TOML files.

Knowledge about rewrite rules (`patches/`), drivers (`drivers/`) and Debian suites
(`suites/`) is data. Each kind is a frozen dataclass; `load_toml_dir` reads every file of
a folder into it, rejecting unknown keys, missing keys and values of the wrong type with an
error that names the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from omatic.errors import RuleError

#: The checkout (or installed tree) holding patches/, drivers/ and kmod/.
PROJECT_ROOT = Path(os.environ.get("PFQ_OMATIC_ROOT", Path(__file__).resolve().parent.parent))
PATCHES_DIR = PROJECT_ROOT / "patches"
DRIVERS_DIR = PROJECT_ROOT / "drivers"
KMOD_DIR = PROJECT_ROOT / "kmod"
SUITES_DIR = PROJECT_ROOT / "suites"
#: The hook test module (a driver of ours that calls every receive entry point).
HOOKMOD_DIR = PROJECT_ROOT / "tests" / "hookmod"
#: libpcap's PFQ capture module, added to Debian's libpcap at build time.
PCAP_MODULE_DIR = PROJECT_ROOT / "libpcap"

T = TypeVar("T")


def _accepts(hint: Any, value: Any) -> bool:
    """True when a TOML value fits a field's type (str, int, bool, tuple[str, ...], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        return isinstance(value, list) and all(_accepts(item, v) for v in value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def load_toml(file: Path, cls: type[T], **extra: Any) -> T:
    """Load one TOML file into the frozen dataclass `cls`; `extra` fills fields not in files."""
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise RuleError(str(err), path=file) from None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields) - set(extra))
    if unknown:
        known = ", ".join(sorted(fields))
        raise RuleError(f"unknown key {unknown[0]!r} (known: {known})", path=file)
    for name, value in raw.items():
        if not _accepts(hints[name], value):
            raise RuleError(f"key {name!r} has the wrong type ({type(value).__name__})", path=file)
        if isinstance(value, list):
            raw[name] = tuple(value)
    missing = [
        n for n, f in fields.items()
        if n not in raw and n not in extra
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RuleError(f"missing key {missing[0]!r}", path=file)
    try:
        return cls(**raw, **extra)
    except ValueError as err:  # __post_init__ validation
        raise RuleError(str(err), path=file) from None


def load_toml_dir(folder: Path, cls: type[T]) -> list[T]:
    """Every `*.toml` of `folder`, sorted by name; each gets `path` and `name` (the stem)."""
    return [load_toml(p, cls, path=p, name=p.stem) for p in sorted(folder.glob("*.toml"))]
