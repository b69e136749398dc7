"""The lab's machine: QEMU (its command, NIC models, the KVM probe) and the initramfs.

The initramfs holds busybox, the modules to load in order, and an /init from a template.

Modules come from two places: the ones we built (pfq.ko, the accelerated driver) and the
in-tree modules they need from the booted image (`/lib/modules/RELEASE/kernel`, found
through its `modules.dep`). Compressed in-tree modules (.ko.xz, .ko.zst) are decompressed
here because busybox's insmod hands the file to init_module() as it is. Modules go to
/modules/ in the image, not /lib/modules/, so nothing in the guest can autoload the
in-tree copy of the driver.
"""

from __future__ import annotations

import contextlib
import functools
import lzma
import os
import re
import selectors
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from omatic.errors import InfraError, PathError, UserError
from omatic.kernels.kernel import Kernel
from omatic.lab import frames

BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
#: Seconds the KVM probe waits for the kernel's first console line.
KVM_PROBE_SECONDS = 3.0

#: Bus drivers a driver's modules.dep does not name but its device needs to appear: a
#: virtio driver binds to a virtio device that virtio_pci creates for the PCI function
#: (built in on Debian's 6.12, a module on 6.1).
BUS_MODULES: dict[str, tuple[str, ...]] = {"virtio": ("virtio_pci",)}
#: NIC models on QEMU's USB: they sit on an xHCI controller, whose driver the guest loads
#: before ours.
USB_MODELS = frozenset({"usb-net"})
USB_HOST_MODULES = ("xhci_pci",)


class NoModulesDepError(PathError):
    template = ("{path}: {message}; install the Debian package linux-image-{release} "
                "(its modules and modules.dep)")


class BusyboxMissingError(InfraError):
    template = ("{path} is missing: the lab's initramfs needs a static busybox; install the "
                "Debian package busybox-static (make setup)")


class QemuMissingError(InfraError):
    template = ("{qemu} is not installed; install the Debian package qemu-system-x86 "
                "(make setup)")


class UnknownNicModelError(UserError):
    template = ("unknown NIC model {model!r}: `{qemu} -device help` (QEMU {version}) lists "
                "no such device; network devices it has: {known}")


@dataclass(frozen=True)
class GuestModule:
    """One module the guest loads."""

    #: Module name as the kernel knows it ("virtio_net").
    name: str
    #: The file on the host (possibly compressed).
    source: Path
    #: Where it lives in the image ("modules/virtio_net.ko").
    image_path: str
    #: Ours (pfq, the accelerated driver) rather than the image's.
    built: bool


def module_name(path: Path | str) -> str:
    """"virtio_net" for kernel/drivers/net/virtio_net.ko.xz; dashes become underscores as
    the kernel does."""
    name = Path(path).name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def read_modules_dep(kernel: Kernel) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """The image's modules.dep as name -> (file, names it depends on)."""
    if kernel.modules_dir is None:
        raise NoModulesDepError("no modules for this kernel",
                                path=f"/lib/modules/{kernel.release}/kernel",
                                release=kernel.release)
    dep_file = kernel.modules_dir.parent / "modules.dep"
    try:
        text = dep_file.read_text()
    except OSError:
        raise NoModulesDepError("cannot read it", path=dep_file,
                                release=kernel.release) from None
    deps: dict[str, tuple[Path, tuple[str, ...]]] = {}
    for line in text.splitlines():
        target, sep, rest = line.partition(":")
        if sep:
            deps[module_name(target)] = (kernel.modules_dir.parent / target,
                                         tuple(module_name(d) for d in rest.split()))
    return deps


def in_tree_needs(depends: list[str], deps: dict[str, tuple[Path, tuple[str, ...]]],
                  ours: set[str]) -> list[str]:
    """The in-tree modules to load before ours, in load order (dependencies first): what
    our modules' `depends` name (built-in ones are absent from modules.dep and skipped),
    what those need in turn, and the bus drivers of BUS_MODULES."""
    wanted = list(depends)
    for trigger, extra in BUS_MODULES.items():
        if trigger in deps and any(trigger in _closure(name, deps) for name in depends):
            wanted.extend(extra)
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in ours or name in order or name not in deps or name in seen:
            return
        for dep in deps[name][1]:
            visit(dep, (*seen, name))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def _closure(name: str, deps: dict[str, tuple[Path, tuple[str, ...]]]) -> set[str]:
    found = {name}
    todo = [name]
    while todo:
        for dep in deps.get(todo.pop(), (Path(), ()))[1]:
            if dep not in found:
                found.add(dep)
                todo.append(dep)
    return found


def decompress(source: Path, dest: Path) -> None:
    """Copy a module, decompressing .xz and .zst."""
    if source.suffix == ".xz":
        dest.write_bytes(lzma.decompress(source.read_bytes()))
    elif source.suffix == ".zst":
        with open(source, "rb") as f:
            dest.write_bytes(zstandard.ZstdDecompressor().stream_reader(f).read())
    else:
        shutil.copyfile(source, dest)


def build_initramfs(root: Path, out: Path, init_text: str, modules: list[GuestModule]) -> None:
    """Stage busybox, `modules` and /init under `root`, then write a newc cpio to `out`."""
    if not BUSYBOX.is_file():
        raise BusyboxMissingError(path=BUSYBOX)
    for sub in ("bin", "modules", "dev", "proc", "sys", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    (root / "init").write_text(init_text)
    (root / "init").chmod(0o755)
    for module in modules:
        decompress(module.source, root / module.image_path)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    try:
        with open(out, "wb") as f:
            subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "--owner=0:0"], cwd=root,
                           input="\n".join(names).encode(), stdout=f, check=True,
                           timeout=60)
    except FileNotFoundError:
        raise InfraError("cpio is not installed; install the Debian package cpio "
                         "(make setup)") from None
    except subprocess.CalledProcessError as err:
        raise InfraError(f"cpio failed (exit {err.returncode}) writing {out}") from None


@dataclass(frozen=True)
class Emulator:
    """The QEMU that runs a guest: this machine's, or a newer one in a kept Debian system
    (QEMU emulates igb since 8.0; Debian 12 has 7.2)."""

    #: Its path, as its system sees it.
    binary: str
    #: The kept system it lives in; None for this machine.
    root: Path | None = None
    #: That system's suite.
    suite: str | None = None

    def argv(self, args: Sequence[str], uses: Sequence[Path] = ()) -> list[str]:
        """The command running QEMU with `args`; in a system, the host folders `uses`
        (the kernel's, the initramfs's) are bound at their own paths."""
        if self.root is None:
            return [self.binary, *args]
        from omatic.kernels.system import chroot_at_own_paths

        return chroot_at_own_paths(self.root, [self.binary, *args], uses)

    @property
    def where(self) -> str:
        return "this machine" if self.suite is None else f"a kept {self.suite} system"


def qemu_binary() -> Emulator:
    """This machine's emulator; QemuMissingError if it is not installed."""
    path = shutil.which(QEMU)
    if path is None:
        raise QemuMissingError(qemu=QEMU)
    return Emulator(path)


#: The suite whose QEMU runs guests this machine's QEMU cannot (Debian 13: QEMU 10.0).
EMULATOR_SUITE = "trixie"


def emulator_for(oldest: str, note: Any = None) -> Emulator:
    """This machine's QEMU when it is `oldest` or newer, else the QEMU of a kept
    EMULATOR_SUITE system (made once, with qemu-system-x86)."""
    from omatic.kernels.system import SystemSpec, ensure_root
    from omatic.versions import version_key

    host = qemu_binary()
    if not oldest or version_key(qemu_version(host) or "0") >= version_key(oldest):
        return host
    root = ensure_root(SystemSpec.of(EMULATOR_SUITE, ["qemu-system-x86"]), note=note)
    newer = Emulator(f"/usr/bin/{QEMU}", root, EMULATOR_SUITE)
    found = qemu_version(newer)
    if version_key(found or "0") < version_key(oldest):
        raise InfraError(f"QEMU {oldest} or newer is needed; this machine has "
                         f"{qemu_version(host) or '?'} and the {EMULATOR_SUITE} system "
                         f"{found or 'none'}")
    return newer


@functools.cache
def qemu_version(qemu: Emulator) -> str:
    """"7.2.22" for QEMU 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18); "" if it does not say."""
    try:
        run = subprocess.run(qemu.argv(["--version"]), capture_output=True, text=True,
                             timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"version (\S+)", run.stdout)
    return match[1] if match else ""


@functools.cache
def device_models(qemu: Emulator) -> dict[str, str]:
    """Every -device name and alias QEMU knows, mapped to the category `-device help`
    lists it under ("Network", "Storage"...)."""
    try:
        run = subprocess.run(qemu.argv(["-device", "help"]), capture_output=True, text=True,
                             timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InfraError(f"`{qemu.binary} -device help` failed: {err}") from None
    models: dict[str, str] = {}
    category = ""
    for line in run.stdout.splitlines():
        if line.endswith("devices:"):
            category = line.removesuffix(" devices:")
        for name in re.findall(r'(?:name|alias) "([^"]+)"', line):
            models[name] = category
    return models


def check_nic_model(qemu: Emulator, model: str) -> None:
    """UnknownNicModelError unless QEMU emulates `model`."""
    models = device_models(qemu)
    if model not in models:
        known = sorted(name for name, cat in models.items() if cat == "Network")
        raise UnknownNicModelError(model=model, qemu=QEMU, version=qemu_version(qemu) or "?",
                                   known=", ".join(known))


@functools.cache
def kvm_probe(qemu: Emulator, vmlinuz: Path) -> str:
    """"works" if KVM boots `vmlinuz` to its first console line within KVM_PROBE_SECONDS,
    else why not. Nested KVM here starts the firmware and then hangs, so a probe that
    merely starts QEMU would say yes."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm"
    cmd = qemu.argv(["-accel", "kvm", "-cpu", "host", "-m", "128", "-display", "none",
                     "-nodefaults", "-no-user-config", "-no-reboot", "-serial", "stdio",
                     "-kernel", str(vmlinuz), "-append",
                     "console=ttyS0 earlyprintk=ttyS0 panic=-1"], [vmlinuz.parent])
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    seen = b""
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + KVM_PROBE_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                if sel.select(timeout=left):
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    seen += chunk
                    if b"Linux version" in seen:
                        return "works"
    finally:
        kill(proc)
    return f"hung: no kernel output within {KVM_PROBE_SECONDS:.0f} s"


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Stop QEMU for good and reap it."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def udp_ports(sock: socket.socket) -> tuple[int, int]:
    """Bind `sock` (the host's end) to a free port of 127.0.0.1 and find another free one
    for QEMU's end: (host port, guest port). The kernel picks both, so concurrent labs do
    not collide (QEMU binds the second a moment later; a clash makes QEMU fail loudly)."""
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    host: int = sock.getsockname()[1]
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            guest: int = probe.getsockname()[1]
        if guest != host:
            return host, guest


def qemu_command(qemu: Emulator, accel: str, vmlinuz: Path, initrd: Path, model: str,
                 guest_port: int, host_port: int, memory: int = 256, cpus: int = 1,
                 icount: bool = False) -> list[str]:
    """The QEMU command line: one vCPU unless told (the host needs the other core to
    inject), the NIC on a dgram netdev whose datagrams from/to 127.0.0.1:`host_port` are
    its frames. With `model` "", the machine has no NIC. With `icount` (TCG only), the
    guest's clocks advance one nanosecond per instruction it runs and jump over its idle
    time, so a span it measures is the instructions run in it, the same in every run."""
    args = ["-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(memory), "-smp", str(cpus), "-display", "none", "-nodefaults",
            "-no-user-config", "-no-reboot", "-serial", "stdio",
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet ipv6.disable=1"]
    if icount:
        args += ["-icount", "shift=0,sleep=off"]
    if model:
        netdev = (f"dgram,id=n0,local.type=inet,local.host=127.0.0.1,"
                  f"local.port={guest_port},remote.type=inet,remote.host=127.0.0.1,"
                  f"remote.port={host_port}")
        args += ["-netdev", netdev,
                 *(["-device", "qemu-xhci,id=xhci"] if model in USB_MODELS else []),
                 "-device", f"{model},netdev=n0,mac={frames.mac_text(frames.GUEST_MAC)}"]
    return qemu.argv(args, [vmlinuz.parent, initrd.parent])


def choose_accel(qemu: Emulator, accel: str, vmlinuz: Path) -> tuple[str, str]:
    """(the accelerator to use, why)."""
    if accel in ("tcg", "kvm"):
        return accel, "asked for"
    probe = kvm_probe(qemu, vmlinuz)
    return ("kvm" if probe == "works" else "tcg"), f"KVM probe: {probe}"
