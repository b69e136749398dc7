"""Every NIC driver a kernel ships: `pfq-omatic drivers`.

Found, not listed by hand: the modules the Kbuild Makefiles of the kernel's linux-source
define under the NIC folders (`drivers/net/ethernet`, `drivers/net/usb`) or among the
virtual NICs below, that the kernel's `.config` builds as modules (`=m`), and whose
sources call a receive entry point of the rewrite rules. A module that only serves
others (a PTP clock, a firmware loader) calls none and is left out; so is one that hands
its frames to a library module (cdc_ether to usbnet): the library is the one listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from omatic.build.source import ModuleDef, TarballCache, module_files
from omatic.kernels.kernel import Kernel
from omatic.manifests import Manifest, load_manifests
from omatic.rules import load_rules

#: Folders whose modules are NIC drivers.
NIC_FOLDERS = ("drivers/net/ethernet/", "drivers/net/usb/")
#: The paravirtual NICs, which live beside other kinds of modules in drivers/net (names as
#: modprobe takes them: '-' and '_' are the same). thunderbolt-net became thunderbolt_net
#: in 6.3.
VIRTUAL_NICS = ("virtio_net", "vmxnet3", "hv_netvsc", "xen_netfront", "thunderbolt_net")


@dataclass(frozen=True)
class NicDriver:
    """One NIC driver of one kernel."""

    #: The module's name as Kbuild spells it ("8139too", "xen-netfront").
    name: str
    #: Its folder in the kernel tree.
    dir: str
    #: The CONFIG_ symbol that builds it as a module on this kernel (the first, if several).
    config: str
    #: The receive entry points its sources call, by name ("napi_gro_receive").
    entry_points: tuple[str, ...]
    #: The driver's manifest, when drivers/ has one (NIC model, limits).
    manifest: Manifest | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dir": self.dir, "config": self.config,
                "entry_points": list(self.entry_points),
                "nic_model": self.manifest.nic_model if self.manifest else "",
                "manifest": self.manifest is not None}


def _normal(name: str) -> str:
    return name.replace("-", "_")


def is_nic_folder(module: ModuleDef) -> bool:
    """Whether `module` is where NIC drivers are: a NIC folder, or a virtual NIC."""
    return (module.dir + "/").startswith(NIC_FOLDERS) or _normal(module.name) in VIRTUAL_NICS


def entry_point_pattern(release: str) -> re.Pattern[str]:
    """A call of any receive entry point the rules know on kernel `release`."""
    callees = sorted(r.callee for r in load_rules() if r.exists_in(release))
    return re.compile(r"\b(" + "|".join(map(re.escape, callees)) + r")\s*\(")


def nic_drivers(kernel: Kernel) -> list[NicDriver]:
    """Every NIC driver `kernel` builds as a module, by name; see the module docstring."""
    from omatic.build.pipeline import kernel_tarball

    cache = TarballCache(kernel_tarball(kernel))
    config = kernel.config()
    calls = entry_point_pattern(kernel.release)
    manifests = {_normal(name): m for name, m in load_manifests().items()}
    found = []
    for module in cache.index().values():
        builds = [c for c in module.configs or (module.config,) if config.get(c) == "m"]
        if not is_nic_folder(module) or not builds:
            continue
        tree = cache.tree_for(module)
        seen: set[str] = set()
        for rel in module_files(tree, module):
            if rel.endswith((".c", ".h")):
                seen.update(calls.findall((tree / rel).read_text(errors="replace")))
        if seen:
            found.append(NicDriver(name=module.name, dir=module.dir, config=builds[0],
                                   entry_points=tuple(sorted(seen)),
                                   manifest=manifests.get(_normal(module.name))))
    return sorted(found, key=lambda d: d.name)


def render_table(drivers: list[NicDriver], kernel: Kernel) -> str:
    """The plain-text listing of `pfq-omatic drivers`."""
    width = max((len(d.name) for d in drivers), default=4)
    lines = [f"{'name':{width}}  {'entry points':40}  {'QEMU model':14}  folder"]
    for d in drivers:
        model = d.manifest.nic_model if d.manifest and d.manifest.nic_model else "-"
        lines.append(f"{d.name:{width}}  {', '.join(d.entry_points):40}  {model:14}  {d.dir}")
    lines.append(f"{len(drivers)} NIC drivers built as modules by {kernel.release}")
    return "\n".join(lines) + "\n"
