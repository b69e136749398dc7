"""Kernels we can build for: their headers, config, symbols, sources and boot images.

A kernel is usable when its Kbuild output tree (the "headers") is installed:
`/lib/modules/RELEASE/build` or `/usr/src/linux-headers-RELEASE`. Around it, Debian
installs the pieces later stages need, each optional: the source tarball of its series
(`/usr/src/linux-source-6.1.tar.xz`), the boot image (`/boot/vmlinuz-RELEASE`) and the
modules of the image (`/lib/modules/RELEASE/kernel`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omatic.errors import PathError
from omatic.kernels.symvers import read_symvers

MODULES_ROOT = Path(os.environ.get("PFQ_OMATIC_MODULES_ROOT", "/lib/modules"))
SRC_ROOT = Path(os.environ.get("PFQ_OMATIC_SRC_ROOT", "/usr/src"))
BOOT_ROOT = Path(os.environ.get("PFQ_OMATIC_BOOT_ROOT", "/boot"))

@dataclass(frozen=True)
class Kernel:
    """One kernel with installed headers: on this machine, or in a kept Debian system of
    its own suite (whose compiler and host tools Kbuild needs)."""

    #: Its UTS_RELEASE, e.g. "6.1.0-56-amd64".
    release: str
    #: Kbuild's output tree for it, as seen from here, e.g.
    #: /usr/src/linux-headers-6.1.0-56-amd64.
    build_dir: Path
    #: The system it lives in, as seen from here; "/" for this machine.
    root: Path = Path("/")
    #: That system's suite; None for this machine.
    suite: str | None = None

    @property
    def on_host(self) -> bool:
        return self.suite is None

    def _in_root(self, host_root: Path, system_path: str) -> Path:
        return host_root if self.on_host else self.root / system_path

    def inside(self, path: Path) -> str:
        """`path` (under root) as its system sees it."""
        return str(path) if self.on_host else "/" + str(path.relative_to(self.root))

    def kbuild_argv(self, module_dir: Path, args: Sequence[str], uses: Sequence[Path] = ()
                    ) -> list[str]:
        """`make -C <headers> M=module_dir ARGS...`, run where the kernel lives: in its
        system, module_dir and the folders ARGS name (`uses`) are bound at their own paths."""
        make = ["make", "-C", self.inside(self.build_dir), f"M={module_dir.absolute()}",
                *args]
        if self.on_host:
            return make
        from omatic.kernels.system import chroot_at_own_paths

        return chroot_at_own_paths(self.root, make, [module_dir, *uses])

    @property
    def series(self) -> str:
        """"6.1" for 6.1.0-56-amd64, "6.12" for 6.12.117+deb12-amd64."""
        return ".".join(re.findall(r"\d+", self.release)[:2])

    @property
    def symvers(self) -> Path:
        """The kernel's Module.symvers: CRCs of everything vmlinux and in-tree modules export."""
        return self.build_dir / "Module.symvers"

    @property
    def source_tarball(self) -> Path | None:
        """Debian's linux-source tarball of this kernel's series, if installed."""
        path = self._in_root(SRC_ROOT, "usr/src") / f"linux-source-{self.series}.tar.xz"
        return path if path.is_file() else None

    @property
    def boot_image(self) -> Path | None:
        path = self._in_root(BOOT_ROOT, "boot") / f"vmlinuz-{self.release}"
        return path if path.is_file() else None

    @property
    def modules_dir(self) -> Path | None:
        """The in-tree modules of the installed image, if any."""
        path = self._in_root(MODULES_ROOT, "lib/modules") / self.release / "kernel"
        return path if path.is_dir() else None

    def callee_symbols(self, callee: str) -> tuple[str, ...]:
        """The symbols a module calling `callee` imports on this kernel: the callee itself
        when the kernel exports it, else, for a static inline of the headers, the exported
        functions its body calls. napi_gro_receive() became an inline over
        gro_receive_skb() in 6.15 ("net: gro: decouple GRO from the NAPI layer",
        291515c76409): this finds that in the headers, not by version."""
        exported = read_symvers(self.symvers)
        if callee in exported:
            return (callee,)
        body = _inline_body(self._include_dirs(), callee)
        calls = re.findall(r"\b([A-Za-z_]\w*)\s*\(", body)
        return tuple(sorted({name for name in calls if name in exported}))

    def _include_dirs(self) -> list[Path]:
        """The headers' include folders: Debian splits them into the flavor's folder and a
        common one (linux-headers-6.1.0-56-common for linux-headers-6.1.0-56-amd64)."""
        base = re.sub(r"-(?:cloud-|rt-)?amd64$", "", self.release)
        common = sorted(self.build_dir.parent.glob(f"linux-headers-{base}-common*/include"))
        return [self.build_dir / "include", *common]

    def config(self) -> dict[str, str]:
        """The kernel's .config as CONFIG_X -> value ("y", "m", a string without quotes)."""
        return _read_config(self.build_dir / ".config")

    def vermagic(self) -> str:
        """The vermagic every module of this kernel carries, computed as
        include/linux/vermagic.h does from UTS_RELEASE and .config (x86_64 adds nothing)."""
        config = self.config()

        def flag(option: str, text: str) -> str:
            return text if config.get(option) == "y" else ""

        preempt = flag("CONFIG_PREEMPT_BUILD", "preempt ") or flag("CONFIG_PREEMPT_RT",
                                                                   "preempt_rt ")
        magic = (f"{self.release} " + flag("CONFIG_SMP", "SMP ") + preempt
                 + flag("CONFIG_MODULE_UNLOAD", "mod_unload ")
                 + flag("CONFIG_MODVERSIONS", "modversions "))
        if config.get("CONFIG_RANDSTRUCT") == "y":
            seed = (self.build_dir / "include/generated/randstruct_hash.h").read_text()
            match = re.search(r'RANDSTRUCT_HASHED_SEED\s+"([0-9a-f]+)"', seed)
            if match is None:
                raise PathError("cannot read RANDSTRUCT_HASHED_SEED", path=self.build_dir)
            magic += f"RANDSTRUCT_{match[1]}"
        return magic

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release, "series": self.series, "build_dir": str(self.build_dir),
            "suite": self.suite, "root": str(self.root),
            "config": (self.build_dir / ".config").is_file(),
            "symvers": self.symvers.is_file(),
            "source_tarball": str(self.source_tarball) if self.source_tarball else None,
            "boot_image": str(self.boot_image) if self.boot_image else None,
            "modules": str(self.modules_dir) if self.modules_dir else None,
        }


def _inline_body(include_dirs: Sequence[Path], name: str) -> str:
    """The body of `static inline ... name(...) { ... }` in include/linux or include/net of
    the headers, or "" when there is none."""
    start = re.compile(rf"static\s+(?:__always_)?inline\b[^;{{}}]*?\b{re.escape(name)}\s*\(")
    for folder in include_dirs:
        for header in sorted([*folder.glob("linux/*.h"), *folder.glob("net/*.h")]):
            text = header.read_text(errors="replace")
            match = start.search(text)
            if match is None:
                continue
            open_at = text.find("{", match.end())
            depth, at = 0, open_at
            while open_at >= 0 and at < len(text):
                depth += {"{": 1, "}": -1}.get(text[at], 0)
                if depth == 0:
                    return text[open_at:at + 1]
                at += 1
    return ""


@functools.lru_cache(maxsize=8)
def _read_config(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        raise PathError("no .config in the kernel headers", path=path.parent) from None
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value.strip('"')
    return config
