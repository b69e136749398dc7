"""`pfq-omatic lab`: prove an accelerated driver in a QEMU guest booting Debian's kernel.

One run: build (or reuse) pfq.ko and the accelerated driver (with its companions, the
modules that receive for it: 8390 for ne2k-pci), make an initramfs with busybox, those
modules and the in-tree modules they need (never the in-tree copy of the driver), boot
`/boot/vmlinuz-RELEASE` with the driver's NIC model on a dgram netdev bound to 127.0.0.1
(in this machine's QEMU, or a kept system's when the model is newer than it), and drive
the guest's /init (templates/lab-init.sh.j2) over the serial console. For each phase the
guest announces, the host injects frames (omatic.lab.frames) and counts the guest's replies;
the guest reports PFQ's counters, the NIC's rx_packets and the pcap stream. The host then
checks:

- bind: the NIC is bound to our module (sysfs driver link, pfq holds it or the companions
  that receive for it, same build id);
- pass: every frame the NIC received crossed a hook, and ARP and ping are answered;
- tap: the pcap holds exactly the frames sent, byte for byte, and replies still come;
- capture: the pcap holds them and the guest answers nothing;
- dmesg: no Oops, BUG, WARNING, call trace or module version/symbol complaint;
- reload: rmmod driver and pfq, insmod both, traffic passes again.

QEMU runs under TCG unless a quick probe shows KVM boots a kernel (nested KVM can hang),
is killed in a `finally`, and everything has a timeout. The report goes to
`OUT/<release>/<driver>/lab.json`; the console log is kept beside it on failure or on
request.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from omatic import __version__
from omatic.cache import write_atomic
from omatic.errors import BuildError, PathError, UserError
from omatic.kernels.kernel import Kernel
from omatic.lab import fanout_phase, frames
from omatic.lab.console import (
    DMESG_BAD,
    NoBootImageError,
    check_timeout,
    console_tail,
    log_kept_only_if,
    run_guest,
)
from omatic.lab.guestpy import PACKAGE_DIR, guest_imports, stage_python
from omatic.lab.vm import (
    USB_HOST_MODULES,
    USB_MODELS,
    GuestModule,
    build_initramfs,
    check_nic_model,
    choose_accel,
    emulator_for,
    in_tree_needs,
    module_name,
    qemu_binary,
    qemu_command,
    qemu_version,
    read_modules_dep,
    udp_ports,
)
from omatic.progress import Step, quiet_step
from omatic.templates import render

#: The phases of the guest's /init besides "reload": name and PFQ mode.
PHASES = (("pass", "pass"), ("tap", "tap"), ("capture", "capture"))
#: Seconds between two injected frames: the emulated NICs have 256 RX descriptors or
#: fewer and the guest is slow under TCG; do not outrun them.
FRAME_GAP = 0.001
class GuestError(BuildError):
    """The guest failed in a way that stops the lab; the console log is kept."""

    template = ("{what} ({driver} on {release}, NIC model {model}); console log: {log}\n"
                "last lines of the console:\n{tail}")


class GuestHangError(GuestError):
    template = ("the guest hung: no end after {seconds:.0f} s ({driver} on {release}, NIC "
                "model {model}); QEMU was killed. Console log: {log}\n"
                "last lines of the console:\n{tail}")


class GuestPanicError(GuestError):
    template = ("the guest kernel panicked ({driver} on {release}, NIC model {model}): "
                "{panic}\nconsole log: {log}\nlast lines of the console:\n{tail}")


class BindError(GuestError):
    template = ("{driver} loaded but no network device is bound to it on {release} with "
                "NIC model {model} (found: {found}); is {model} a device {driver} drives? "
                "Console log: {log}")


@dataclass(frozen=True)
class LabConfig:
    """What to prove, and how."""

    #: Module name of the driver ("e1000e").
    driver: str
    kernel: Kernel
    #: QEMU -device model of the NIC ("e1000e", "virtio-net-pci").
    nic_model: str
    #: Frames injected per phase.
    frames: int = 100
    #: Root of the outputs: OUT/<release>/<driver>/ holds the build and lab.json.
    out_root: Path = Path("out")
    #: Make jobs for a build that is not up to date.
    jobs: int = os.cpu_count() or 1
    #: Keep the console log (and pcaps) even when every check holds.
    keep: bool = False
    #: Seconds from QEMU's start to the guest's end before it counts as hung.
    timeout: float = 120.0
    #: "auto" (KVM if the probe shows it boots, else TCG), "tcg" or "kvm".
    accel: str = "auto"
    #: Guest memory in MiB.
    memory: int = 256
    #: Seconds the guest waits in each phase for its frames to be counted.
    phase_wait: float = 15.0
    #: Root of a system whose DKMS installed pfq.ko and the driver: boot those, from
    #: ROOT/lib/modules/<release>/updates/dkms, instead of building them.
    installed: Path | None = None
    #: Modules that receive for the driver (the manifest's companions), built and loaded
    #: with it.
    companions: tuple[str, ...] = ()
    #: The oldest QEMU that emulates the NIC model (the manifest's qemu_min): an older
    #: QEMU here gives way to a kept system's.
    qemu_min: str = ""
    #: Also run `pfq-omatic capture` with 4 hash-steered workers on the NIC
    #: (omatic.lab.fanout_phase), with the counters that place a lost frame.
    fanout: bool = True

    @property
    def installed_dir(self) -> Path | None:
        if self.installed is None:
            return None
        return self.installed / "lib/modules" / self.kernel.release / "updates/dkms"

    @property
    def out_dir(self) -> Path:
        return self.out_root / self.kernel.release / self.driver

    @property
    def ring_slots(self) -> int:
        """pfq.ko's ring size: large enough to hold a whole phase."""
        return max(1024, self.frames)


@dataclass
class LabResult:
    """The outcome of one lab run: `report` is what lab.json holds."""

    report: dict[str, Any]
    out_dir: Path
    console_log: Path | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok"))


# --- modules -------------------------------------------------------------------------


def build_id(ko: Path) -> str:
    """The GNU build id of a module (hex), "" if it has none: the guest reads the same
    bytes from /sys/module/NAME/notes/.note.gnu.build-id."""
    from omatic.verify.modfile import KernelModule

    with io.BytesIO(KernelModule(ko).data) as f:  # a DKMS-installed one may be .ko.xz
        section = ELFFile(f).get_section_by_name(".note.gnu.build-id")
        if not isinstance(section, NoteSection):
            return ""
        for note in section.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return ""


def _modinfo(ko: Path) -> dict[str, list[str]]:
    from omatic.verify.modfile import KernelModule

    return KernelModule(ko).modinfo()


def _installed_modules(folder: Path, drivers: Sequence[str]) -> tuple[Path, list[Path]]:
    """pfq.ko and the drivers' modules where DKMS installed them (compressed as the
    kernel's own modules are: e1000e.ko.xz on 6.12)."""
    from omatic.verify.modfile import find_module

    names = ("pfq", *drivers)
    found = {name: path for name in names
             if (path := find_module(folder, f"{name}.ko")) is not None}
    missing = [f"{name}.ko" for name in names if name not in found]
    if missing:
        raise PathError(f"no {' nor '.join(missing)} installed by DKMS here (is the package "
                        "installed for this kernel?)", path=folder)
    return found["pfq"], [found[name] for name in drivers]


def guest_modules(driver: str, kernel: Kernel, pfq_ko: Path, built: list[Path],
                  extra: Sequence[str] = ()) -> tuple[list[GuestModule], list[GuestModule]]:
    """(in-tree modules to load first, ours to load after: pfq, helpers and companions,
    the driver). `extra` are in-tree modules the machine needs besides (a USB host's)."""
    ours = [GuestModule("pfq", pfq_ko, "modules/pfq.ko", built=True)]
    for ko in sorted(built, key=lambda p: module_name(p) == driver):
        ours.append(GuestModule(module_name(ko), ko, f"modules/{module_name(ko)}.ko",
                                built=True))
    # modinfo spells a dependency as its file is named (i2c-algo-bit), modules.dep as the
    # kernel names it (i2c_algo_bit).
    depends = [*extra, *(module_name(d) for ko in built
                         for line in _modinfo(ko).get("depends", [])
                         for d in line.split(",") if d)]
    deps = read_modules_dep(kernel)
    names = in_tree_needs(depends, deps, {m.name for m in ours})
    first = [GuestModule(n, deps[n][0], f"modules/{n}.ko", built=False) for n in names]
    return first, ours


# --- the console session -------------------------------------------------------------


@dataclass
class _Phase:
    burst: frames.Burst
    guest: dict[str, Any] = field(default_factory=dict)
    replies: dict[str, int] = field(default_factory=lambda: {"arp-reply": 0, "echo-reply": 0,
                                                             "other": 0})
    pcap: bytes | None = None


class Session:
    """Follows the guest's console lines and answers them: injects the frames of each
    phase it announces, counts the replies, collects reports, pcaps and dmesg lines."""

    def __init__(self, sock: socket.socket, guest_port: int) -> None:
        self.sock = sock
        self.guest_port = guest_port
        #: When QEMU started (set by run_guest).
        self.start = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.phases: dict[str, _Phase] = {}
        self.binds: dict[str, dict[str, Any]] = {}
        self.dmesg: list[str] = []
        self.failure: dict[str, Any] | None = None
        self.unbound: dict[str, Any] | None = None
        self.boot_seconds: float | None = None
        self.ended = False
        self._pcap: tuple[str, list[str]] | None = None
        self._seq = 0
        #: Pcap streams that belong to no phase (the fan-out workers' files), by name.
        self.pcaps: dict[str, bytes] = {}
        #: The guest's report of the fan-out phase.
        self.fanout: dict[str, Any] | None = None

    def _drain(self, phase: _Phase | None) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            if phase is not None:
                phase.replies[frames.classify(data)] += 1

    def send(self, frame: bytes) -> None:
        """One frame to the guest's NIC: one datagram to QEMU's end of the netdev."""
        self.sock.sendto(frame, ("127.0.0.1", self.guest_port))

    def feed(self, line: str) -> None:
        if self._pcap is not None:
            name, lines = self._pcap
            if line.startswith("OMATIC-PCAP-END"):
                import base64

                data = base64.b64decode("".join(lines))
                if name in self.phases:
                    self.phases[name].pcap = data
                else:
                    self.pcaps[name] = data
                self._pcap = None
            else:
                lines.append(line.strip())
            return
        if line.startswith("OMATIC-DMESG "):
            self.dmesg.append(line.removeprefix("OMATIC-DMESG "))
        elif line.startswith("OMATIC-PCAP-BEGIN "):
            self._pcap = (line.split()[1], [])
        elif line.startswith("OMATIC {"):
            try:
                event = json.loads(line.removeprefix("OMATIC "))
            except ValueError:
                return
            self.events.append(event)
            self.on_event(event)

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "boot":
            self.boot_seconds = round(time.monotonic() - self.start, 2)
        elif kind == "bind":
            self.binds[event["phase"]] = event
        elif kind == "unbound":
            self.unbound = event
        elif kind == "fail":
            self.failure = event
        elif kind == "fanout":
            self.fanout = event
        elif kind == "ready":
            n = int(event["frames"])
            flows = event.get("kind") == "flows"
            per_flow = n // fanout_phase.FLOWS
            phase = _Phase(frames.flows_burst(fanout_phase.FLOWS, per_flow, self._seq)
                           if flows else frames.burst(n, self._seq))
            self._seq += len(phase.burst.frames)
            self.phases[event["phase"]] = phase
            self._drain(None)
            # The fan-out phase's guest is busy with its 4 workers: a NIC with a small
            # ring (ne2k-pci) lost frames at the usual pace.
            gap = fanout_phase.FRAME_GAP if flows else FRAME_GAP
            for frame in phase.burst.frames:
                self.send(frame)
                time.sleep(gap)
        elif kind == "phase":
            phase = self.phases[event["phase"]]
            phase.guest = event
            time.sleep(0.2)
            self._drain(phase)
        elif kind == "end":
            self.ended = True


# --- checks ----------------------------------------------------------------------------


def _deltas(guest: dict[str, Any]) -> dict[str, int]:
    before, after = guest.get("before", {}), guest.get("after", {})
    return {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in after}


def _check_phase(name: str, phase: _Phase | None, n: int) -> tuple[dict[str, Any], list[str]]:
    """The figures of one phase and what is wrong with them."""
    if phase is None or not phase.guest:
        return {"ran": False}, [f"{name}: the guest never reported this phase"]
    d = _deltas(phase.guest)
    mode = phase.guest["mode"]
    b = phase.burst
    problems = []
    if d["rx_packets"] != n:
        problems.append(f"the NIC received {d['rx_packets']} of {n} frames")
    if d["packets"] != d["rx_packets"]:
        problems.append(f"PFQ's hooks counted {d['packets']} frames, the NIC received "
                        f"{d['rx_packets']}")
    want_stack, want_captured = {"pass": (n, 0), "tap": (n, n), "capture": (0, n)}[mode]
    if d["to_stack"] != want_stack:
        problems.append(f"to_stack={d['to_stack']}, expected {want_stack}")
    if d["captured"] != want_captured or d["dropped"] != 0:
        problems.append(f"captured={d['captured']} dropped={d['dropped']}, expected "
                        f"captured={want_captured} dropped=0")
    replies = phase.replies
    if mode == "capture":
        if replies["arp-reply"] or replies["echo-reply"]:
            problems.append(f"the guest answered in capture mode: {replies['arp-reply']} ARP "
                            f"and {replies['echo-reply']} echo replies")
    elif (replies["arp-reply"], replies["echo-reply"]) != (b.arp, b.icmp):
        problems.append(f"{replies['arp-reply']}/{b.arp} ARP replies and "
                        f"{replies['echo-reply']}/{b.icmp} echo replies came back")
    figures: dict[str, Any] = {
        "ran": True, "mode": mode, "sent": {"frames": n, "arp": b.arp, "icmp": b.icmp,
                                            "udp": b.udp},
        "counters": d, "replies": dict(replies), "waited_s": phase.guest["waited_ticks"] / 10,
    }
    if mode != "pass":
        if phase.pcap is None:
            problems.append("no pcap stream came back")
        else:
            try:
                got = frames.read_pcap(phase.pcap)
            except frames.PcapError as err:
                problems.append(f"the pcap stream is unreadable: {err}")
                got = []
            diff = frames.first_difference(b.frames, got)
            figures["pcap"] = {"bytes": len(phase.pcap), "frames": len(got),
                               "equal_to_sent": not diff}
            if diff:
                problems.append(f"the pcap is not what was sent: {diff}")
    return figures, [f"{name}: {p}" for p in problems]


def _check_bind(name: str, bind: dict[str, Any] | None, driver: str, want_id: str,
                want_src: str) -> tuple[dict[str, Any], list[str]]:
    if bind is None:
        return {"bound": False}, [f"bind ({name}): no device bound to {driver}"]
    problems = []
    if bind["module"] != driver:
        problems.append(f"the device's module is {bind['module']}, not {driver}")
    if bind["pfq_holder"] != 1:
        problems.append(f"pfq does not hold {driver} (or the companions that receive for "
                        "it): the in-tree module is loaded?")
    if not want_id or not bind["build_id"].endswith(want_id):
        problems.append(f"build id in the guest {bind['build_id'][-40:] or '-'} != built "
                        f"{want_id or '-'}")
    if want_src and bind["srcversion"] != want_src:
        problems.append(f"srcversion {bind['srcversion']!r} != built {want_src!r}")
    figures = {"bound": True, "iface": bind["iface"], "module": bind["module"],
               "build_id": want_id, "build_id_matches": bool(want_id) and
               bind["build_id"].endswith(want_id),
               "srcversion": bind["srcversion"] or None,
               "srcversion_checked": bool(want_src), "pfq_holder": bind["pfq_holder"] == 1,
               "taint": bind["taint"]}
    return figures, [f"bind ({name}): {p}" for p in problems]


# --- the run ---------------------------------------------------------------------------


def run_lab(config: LabConfig, step: Step = quiet_step) -> LabResult:
    """Build what is needed, boot the guest, inject, check; see the module docstring.
    Returns the result (ok or not); raises a GuestError when the guest could not be
    driven to the end (hang, panic, no bound device, a failed insmod)."""
    from omatic.build.pipeline import BuildRequest, build_driver, ensure_kmod

    if config.frames < 5 or config.frames > 100_000:
        raise UserError(f"--frames {config.frames}: expected 5 to 100000")
    check_timeout(config.timeout)
    with step("emulator"):
        qemu = emulator_for(config.qemu_min)
    check_nic_model(qemu, config.nic_model)
    vmlinuz = config.kernel.boot_image
    if vmlinuz is None:
        raise NoBootImageError(release=config.kernel.release,
                               path=f"/boot/vmlinuz-{config.kernel.release}")
    if config.installed_dir is not None:
        pfq_ko, modules = _installed_modules(config.installed_dir,
                                             [*config.companions, config.driver])
        out_dir = config.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        modules = []
        for name in (*config.companions, config.driver):
            with step(f"build {name}"):
                built = build_driver(BuildRequest(driver=name, kernel=config.kernel,
                                                  out_root=config.out_root, jobs=config.jobs))
            if not built.ok:
                raise BuildError(f"{name} for {config.kernel.release} does not verify; "
                                 f"see {built.out_dir / 'report.json'}")
            modules += built.modules
        pfq_ko = ensure_kmod(config.kernel, config.jobs).ko
        out_dir = built.out_dir
    # The kernel's name of the module: "ne2k-pci.ko" is module ne2k_pci in sysfs.
    kname = module_name(config.driver)
    driver_ko = next(m for m in modules if module_name(m) == kname)
    deps, ours = guest_modules(kname, config.kernel, pfq_ko, modules,
                               USB_HOST_MODULES if config.nic_model in USB_MODELS else ())
    # The modules that must hold pfq: those that import its hooks (8390 for ne2k-pci).
    pfq_users = [m.name for m in ours if m.name != "pfq" and "pfq" in
                 ",".join(_modinfo(m.source).get("depends", [])).split(",")]
    want_id = build_id(driver_ko)
    want_src = (_modinfo(driver_ko).get("srcversion") or [""])[0]
    with step("accelerator"):
        accel, accel_why = choose_accel(qemu_binary(), config.accel, vmlinuz)
    log = out_dir / "lab-console.log"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pfq-omatic-lab-") as tmp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        host_port, guest_port = udp_ports(sock)
        initrd = Path(tmp) / "initrd.cpio"
        init = render("lab-init.sh.j2", driver=kname, release=config.kernel.release,
                      frames=config.frames, wait_ticks=round(config.phase_wait * 10),
                      ring_slots=config.ring_slots,
                      ours=ours, deps=deps, phases=PHASES, pfq_users=pfq_users,
                      guest_ip=frames.ip_text(frames.GUEST_IP),
                      host_ip=frames.ip_text(frames.HOST_IP),
                      host_mac=frames.mac_text(frames.HOST_MAC),
                      dmesg_pattern="|".join(DMESG_BAD), pps=False,
                      fanout=config.fanout, fanout_workers=fanout_phase.WORKERS,
                      fanout_frames=fanout_phase.FLOWS * fanout_phase.PER_FLOW,
                      python_path=PACKAGE_DIR)
        with step("initramfs"):
            if config.fanout:
                stage_python(Path(tmp) / "root", guest_imports(init))
            build_initramfs(Path(tmp) / "root", initrd, init, [*deps, *ours])
        cmd = qemu_command(qemu, accel, vmlinuz, initrd, config.nic_model, guest_port,
                           host_port, config.memory)
        with step(f"boot ({accel})"), log_kept_only_if(config.keep, log):
            session = Session(sock, guest_port)
            status, stderr, seconds = run_guest(cmd, session, log, config.timeout)
    report: dict[str, Any] = {
        "tool": "pfq-omatic", "version": __version__, "driver": config.driver,
        "kernel": config.kernel.release, "nic_model": config.nic_model,
        "frames_per_phase": config.frames, "accel": accel, "accel_reason": accel_why,
        "qemu": {"binary": qemu.binary, "version": qemu_version(qemu), "system": qemu.suite,
                 "command": shlex.join(cmd), "exit": status,
                 "ports": {"guest": guest_port, "host": host_port}},
        "modules": {"in_tree": [m.name for m in deps], "ours": [m.name for m in ours],
                    "from": str(config.installed_dir or out_dir)},
        "boot_seconds": session.boot_seconds, "guest_seconds": round(seconds, 2),
        "total_seconds": round(time.monotonic() - started, 2),
    }
    ctx: dict[str, Any] = {"driver": config.driver, "release": config.kernel.release,
           "model": config.nic_model, "log": log, "tail": console_tail(log)}
    error: GuestError | None = None
    console = log.read_text(errors="replace") if log.exists() else ""
    panic = re.search(r"Kernel panic - .*", console)
    if panic is not None:
        error = GuestPanicError(panic=panic[0].strip(), **ctx)
    elif session.failure is not None and session.failure.get("step") == "bind":
        found = session.unbound or {}
        error = BindError(found=f"interfaces:{found.get('nets') or ' none'}; NICs (PCI "
                                f"vendor:device=driver):{found.get('nics') or ' none'}", **ctx)
    elif session.failure is not None:
        f = session.failure
        error = GuestError(what=f"the guest failed at {f.get('step')} {f.get('detail')}",
                           **ctx)
    elif not session.ended and status is None:
        error = GuestHangError(seconds=config.timeout, **ctx)
    elif not session.ended:
        error = GuestError(what=f"QEMU exited ({status}) before the guest ended: "
                                f"{stderr.strip()[-500:] or 'no message'}", **ctx)
    failures: list[str] = []
    checks: dict[str, Any] = {}
    for name in ("first", "reload"):
        checks[f"bind_{name}"], problems = _check_bind(name, session.binds.get(name),
                                                       kname, want_id, want_src)
        failures += problems
    for name in [p for p, _ in PHASES] + ["reload"]:
        checks[name], problems = _check_phase(name, session.phases.get(name), config.frames)
        failures += problems
    if config.fanout:
        fanout = session.phases.get(fanout_phase.PHASE)
        checks[fanout_phase.PHASE], problems = fanout_phase.check_fanout(
            fanout.burst.frames if fanout else None, session.pcaps, session.fanout,
            out_dir if config.keep else None)
        failures += problems
    checks["dmesg"] = {"bad_lines": session.dmesg}
    failures += [f"dmesg: {line}" for line in session.dmesg]
    if error is not None:
        failures.insert(0, str(error).splitlines()[0])
    report["checks"] = checks
    report["failures"] = failures
    report["ok"] = not failures
    keep = config.keep or bool(failures)
    report["console_log"] = str(log) if keep else None
    if keep:
        for name, phase in session.phases.items():
            (out_dir / f"lab-{name}-sent.pcap").write_bytes(frames.write_pcap(phase.burst.frames))
            if phase.pcap is not None:
                (out_dir / f"lab-{name}.pcap").write_bytes(phase.pcap)
    else:
        log.unlink(missing_ok=True)
    write_atomic(out_dir / "lab.json", json.dumps(report, indent=1) + "\n")
    if error is not None:
        raise error
    return LabResult(report=report, out_dir=out_dir, console_log=log if keep else None,
                     failures=failures)
