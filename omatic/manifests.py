"""Driver manifests: what code cannot find out about a driver (drivers/*.toml).

Any in-tree module builds without a manifest (omatic.build.source finds it in the Kbuild
Makefiles). A manifest adds aliases, the QEMU NIC model that exercises the driver in the
lab, and known limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omatic.data import DRIVERS_DIR, load_toml_dir


@dataclass(frozen=True)
class Manifest:
    #: File the manifest came from (set by the loader).
    path: Path
    #: The module name, from the file name ("e1000e").
    name: str
    #: One line on the hardware it drives.
    description: str
    #: Other names users type for it ("virtio-net").
    aliases: tuple[str, ...] = ()
    #: The QEMU -device model whose Linux driver this is ("e1000e"), or "" if QEMU has none.
    nic_model: str = ""
    #: Known limits of the accelerated driver, for reports.
    limits: str = ""
    #: Modules that receive for it, built accelerated and loaded with it: ne2k-pci hands
    #: its frames to 8390's netif_rx, cdc_ether to usbnet's.
    companions: tuple[str, ...] = ()
    #: Why the lab cannot prove it with its QEMU model, when it cannot ("" when it can).
    no_lab: str = ""
    #: The oldest QEMU that emulates `nic_model` ("8.0" for igb), when older ones lack it.
    qemu_min: str = ""


def load_manifests(folder: Path = DRIVERS_DIR) -> dict[str, Manifest]:
    """Every manifest of `folder` by module name."""
    return {m.name: m for m in load_toml_dir(folder, Manifest)}


def resolve(name: str, manifests: dict[str, Manifest] | None = None) -> tuple[str, Manifest | None]:
    """The module name for what the user typed (a name or an alias), and its manifest."""
    manifests = load_manifests() if manifests is None else manifests
    for manifest in manifests.values():
        if name == manifest.name or name in manifest.aliases:
            return manifest.name, manifest
    return name, None
