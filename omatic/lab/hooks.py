"""`pfq-omatic hooks`: every PFQ hook proven in a guest, by the hook test module.

tests/hookmod/pfq_hooktest.c is a driver of ours that calls each receive entry point
(netif_receive_skb, netif_rx, napi_gro_receive, napi_gro_frags, netif_receive_skb_list)
on a netdev of its own. It is rewritten, built and verified like any driver (`build
--source`), then loaded in a guest booting the kernel, after pfq.ko with a small ring. In
the guest it checks, for each entry point and each case (tap and capture with no pcap
reader, then pass, tap, capture, ring full with one), the counters, the value returned to
the driver, what reached the stack and the pcap bytes, and prints KTAP. Then
omatic.lab.groupcheck, in the guest's Python (omatic.lab.guestpy), proves PFQ's groups
through /dev/pfq with frames the module injects: steering, filters, modes, endpoints
leaving, permissions and bad requests (a second document); omatic.lab.safetycheck
proves pfq.ko's guards against users without privilege and careless readers (a third).
The guest's /init (templates/hooklab-init.sh.j2) then checks, as a fourth KTAP document,
bad control writes, `rmmod pfq` while in use, a device removed in tap mode and a clean
unload. The documents are parsed here, and pfq.ko's W=1 build log read for warnings (there
must be none); the report goes to `OUT/<release>/pfq_hooktest/hooks.json`. With
`bench`, the guest also times the hooks with groups (bench/fanout.py) or what pcap
applications get (bench/pcap.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omatic import __version__
from omatic.cache import write_atomic
from omatic.data import HOOKMOD_DIR
from omatic.errors import BuildError, OmaticError
from omatic.kernels.kernel import Kernel
from omatic.lab.console import (
    DMESG_BAD,
    NoBootImageError,
    check_timeout,
    console_tail,
    log_kept_only_if,
    run_guest,
)
from omatic.lab.groupcheck import TCPDUMP
from omatic.lab.guestpy import (
    PACKAGE_DIR,
    guest_imports,
    stage_library,
    stage_program,
    stage_python,
)
from omatic.lab.ktap import KtapError, KtapResult, parse
from omatic.lab.pcapcheck import DUMPCAP, SOFTFLOWCTL, SOFTFLOWD, TSHARK
from omatic.lab.safetycheck import DEVICE_SLOTS, RING_MEMORY_MAX, SETPRIV
from omatic.lab.vm import (
    GuestModule,
    build_initramfs,
    choose_accel,
    in_tree_needs,
    qemu_binary,
    qemu_command,
    qemu_version,
    read_modules_dep,
)
from omatic.pfq.endpoint import compile_filter
from omatic.progress import Step, quiet_step
from omatic.templates import render

if TYPE_CHECKING:
    from omatic.build.kbuild import KmodBuild

#: The test module's name (tests/hookmod/pfq_hooktest.c).
MODULE = "pfq_hooktest"
#: The KTAP documents the guest prints: the module's, omatic.lab.groupcheck's,
#: omatic.lab.safetycheck's, omatic.lab.fuzzcheck's, /init's.
DOCUMENTS = ("hooks", "groups", "safety", "fuzz", "guest")
#: What a guest that counts instructions prints: it runs no check that needs two CPUs.
COUNT_DOCUMENTS = ("hooks", "guest")
#: What a guest given a libpcap with PFQ prints too: omatic.lab.pcapcheck's.
PCAP_DOCUMENT = "pcap"
#: In-tree modules the guest loads first: dummy, for the safety checks' `ip link add`.
IN_TREE = ("dummy",)
#: The users and groups of the guest: root, tcpdump's and nobody (the unprivileged
#: check's).
GUEST_PASSWD = ("root:x:0:0:root:/:/bin/sh\ntcpdump:x:100:100::/:/bin/false\n"
                "nobody:x:65534:65534::/:/bin/false\n")
GUEST_GROUP = "root:x:0:\ntcpdump:x:100:\nnogroup:x:65534:\n"
#: Where the guest finds the host's answers for the group checks (the BPF program).
GROUPCHECK_CONFIG = "/etc/pfq-groupcheck.json"
#: pfq.ko's ring_slots in the guest: small, so that the ring-full case is quick.
SLOTS = DEVICE_SLOTS
#: MiB of the guest with pcap applications: tshark's libraries alone (libwireshark and
#: what it links) are 160 MB of the initramfs, loaded and then unpacked in its memory.
PCAP_MEMORY = 1024


@dataclass(frozen=True)
class HookLabConfig:
    kernel: Kernel
    out_root: Path = Path("out")
    jobs: int = os.cpu_count() or 1
    timeout: float = 420.0
    accel: str = "auto"
    memory: int = 256
    #: Keep the console log even when every test passes.
    keep: bool = False
    #: The test module's sources.
    source: Path = HOOKMOD_DIR
    #: Also time, by the guest module of this name: "omatic.lab.rxbench", the receive
    #: path (bench/fanout.py); "omatic.lab.pcapbench", pcap applications (bench/pcap.py,
    #: with `pcap_libdir`). "": no timing.
    bench: str = ""
    #: The bench's C readers (bench/reader.c), staged into the guest.
    reader: Path | None = None
    #: The bench counts instructions instead of timing (QEMU's -icount; TCG only): its
    #: figures are then the same in every run. It runs the one-CPU cost set-ups only, on
    #: one vCPU (6.1's second never comes up under -icount), so the checks that feed
    #: frames from two CPUs (groups, safety, fuzz) are left to the untimed lab.
    icount: bool = False
    #: The seed of omatic.lab.fuzzcheck's calls; None: a new one (in the report).
    fuzz_seed: int | None = None
    #: The folder of the libpcap `pfq-omatic pcap` built (omatic.pcap.build): tcpdump
    #: runs on it in the guest (omatic.lab.pcapcheck). None: that document is left out.
    pcap_libdir: Path | None = None


@dataclass
class HookSession:
    """Collects the KTAP documents, dmesg lines and events of the guest's console."""

    start: float = 0.0
    ended: bool = False
    documents: dict[str, str] = field(default_factory=dict)
    dmesg: list[str] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    _open: tuple[str, list[str]] | None = None

    def feed(self, line: str) -> None:
        if self._open is not None:
            name, lines = self._open
            if line.startswith("OMATIC-KTAP-END"):
                self.documents[name] = "\n".join(lines)
                self._open = None
            else:
                lines.append(line)
            return
        if line.startswith("OMATIC-KTAP-BEGIN "):
            self._open = (line.split()[1], [])
        elif line.startswith("OMATIC-BENCH "):
            with contextlib.suppress(ValueError):
                self.bench = json.loads(line.removeprefix("OMATIC-BENCH "))
        elif line.startswith("OMATIC-DMESG "):
            self.dmesg.append(line.removeprefix("OMATIC-DMESG "))
        elif line.startswith("OMATIC {"):
            try:
                event = json.loads(line.removeprefix("OMATIC "))
            except ValueError:
                return
            if event.get("event") == "fail":
                self.failure = event
            elif event.get("event") == "end":
                self.ended = True


@dataclass
class HookLabResult:
    report: dict[str, Any]
    out_dir: Path
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def kmod_failures(kmod: KmodBuild) -> list[str]:
    """pfq.ko is proven clean at W=1 too: each compiler or modpost warning of its build
    is a failure of the lab (not of a driver's build: the kernel loads the module all
    the same)."""
    return [f"pfq.ko at W=1: {line.strip()}" for line in kmod.warnings()]


def run_hook_lab(config: HookLabConfig, step: Step = quiet_step) -> HookLabResult:
    """Build the test module, boot the guest, parse its KTAP; see the module docstring."""
    from omatic.build.pipeline import BuildRequest, build_driver, ensure_kmod

    check_timeout(config.timeout)
    kernel = config.kernel
    qemu = qemu_binary()
    vmlinuz = kernel.boot_image
    if vmlinuz is None:
        raise NoBootImageError(release=kernel.release, path=f"/boot/vmlinuz-{kernel.release}")
    with step("build"):
        built = build_driver(BuildRequest(driver=MODULE, kernel=kernel, source_dir=config.source,
                                          out_root=config.out_root, jobs=config.jobs))
        if not built.ok:
            raise BuildError(f"{MODULE} for {kernel.release} does not verify; see "
                             f"{built.out_dir / 'report.json'}")
        kmod = ensure_kmod(kernel, config.jobs)
    (test_ko,) = built.modules
    modules = [GuestModule("pfq", kmod.ko, "modules/pfq.ko", built=True),
               GuestModule(MODULE, test_ko, f"modules/{MODULE}.ko", built=True)]
    image = read_modules_dep(kernel)
    deps = [GuestModule(name, image[name][0], f"modules/{name}.ko", built=False)
            for name in in_tree_needs(list(IN_TREE), image, set())]
    with step("accelerator"):
        accel, accel_why = ("tcg", "instructions are counted (-icount)") if config.icount \
            else choose_accel(qemu, config.accel, vmlinuz)
    out_dir = built.out_dir
    log = out_dir / "hooks-console.log"
    started = time.monotonic()
    session = HookSession()
    fuzz_seed = config.fuzz_seed if config.fuzz_seed is not None else \
        random.SystemRandom().randrange(1 << 32)
    with tempfile.TemporaryDirectory(prefix="pfq-omatic-hooks-") as tmp:
        initrd, root = Path(tmp) / "initrd.cpio", Path(tmp) / "root"
        init = render("hooklab-init.sh.j2", release=kernel.release, module=MODULE,
                      slots=SLOTS, ring_memory_max=RING_MEMORY_MAX, deps=deps,
                      dmesg_pattern="|".join(DMESG_BAD),
                      python_path=PACKAGE_DIR, groupcheck_config=GROUPCHECK_CONFIG,
                      bench=config.bench, count_only=config.icount, fuzz_seed=fuzz_seed,
                      pcap_libdir=config.pcap_libdir)
        with step("initramfs"):
            stage_python(root, guest_imports(init))
            stage_program(root, Path(TCPDUMP))
            stage_program(root, Path(SETPRIV))
            if config.reader is not None:
                stage_program(root, config.reader)
            if config.pcap_libdir is not None:
                stage_library(root, config.pcap_libdir)
                for name in (DUMPCAP, TSHARK, SOFTFLOWD, SOFTFLOWCTL):
                    stage_program(root, Path(name))
                for test in sorted((config.pcap_libdir.parent / "testprogs").iterdir()):
                    stage_program(root, test)
            (root / "etc").mkdir(exist_ok=True)
            # Debian's tcpdump drops root for a user of its own: the guest has one.
            (root / "etc" / "passwd").write_text(GUEST_PASSWD)
            (root / "etc" / "group").write_text(GUEST_GROUP)
            program = compile_filter("udp and dst port 9")
            (root / GROUPCHECK_CONFIG.lstrip("/")).write_text(json.dumps(
                {"udp_dst_9": program,
                 "reader": str(config.reader) if config.reader else None,
                 "pcap_libdir": str(config.pcap_libdir) if config.pcap_libdir else None,
                 "icount": config.icount}))
            build_initramfs(root, initrd, init, deps + modules)
        # Two vCPUs, so cpu steering is proven with frames fed from each; one to count.
        memory = config.memory if config.pcap_libdir is None else \
            max(config.memory, PCAP_MEMORY)
        cmd = qemu_command(qemu, accel, vmlinuz, initrd, "", 0, 0, memory,
                           cpus=1 if config.icount else 2, icount=config.icount)
        with step(f"boot ({accel})"), log_kept_only_if(config.keep, log):
            status, stderr, seconds = run_guest(cmd, session, log, config.timeout)
    failures: list[str] = []
    results: dict[str, list[dict[str, Any]]] = {}
    documents = COUNT_DOCUMENTS if config.icount else DOCUMENTS
    if config.pcap_libdir is not None and not config.icount:
        documents = (*documents, PCAP_DOCUMENT)
    for name in documents:
        text = session.documents.get(name)
        if text is None:
            failures.append(f"{name}: the guest printed no KTAP document")
            continue
        try:
            parsed: list[KtapResult] = parse(text)
        except KtapError as err:
            failures.append(f"{name}: {err}")
            continue
        results[name] = [r.to_json() for r in parsed]
        failures += [f"{name}: {f}" for r in parsed for f in r.failures()]
    if config.bench and session.bench is None:
        failures.append("bench: the guest printed no timings")
    if session.failure is not None:
        failures.insert(0, f"the guest failed at {session.failure.get('step')} "
                           f"{session.failure.get('detail')}")
    elif not session.ended:
        why = "hung" if status is None else f"QEMU exited ({status}): {stderr.strip()[-300:]}"
        failures.insert(0, f"the guest did not end: {why}")
    console = log.read_text(errors="replace") if log.exists() else ""
    if panic := re.search(r"Kernel panic - .*", console):
        failures.insert(0, f"the guest kernel panicked: {panic[0].strip()}")
    failures += [f"dmesg: {line}" for line in session.dmesg]
    failures += kmod_failures(kmod)
    keep = config.keep or bool(failures)
    report: dict[str, Any] = {
        "tool": "pfq-omatic", "version": __version__, "kernel": kernel.release,
        "module": MODULE, "ring_slots": SLOTS, "fuzz_seed": fuzz_seed, "accel": accel,
        "accel_reason": accel_why,
        "qemu": {"binary": qemu.binary, "version": qemu_version(qemu),
                 "command": shlex.join(cmd),
                 "exit": status},
        "results": results, "failures": failures, "ok": not failures,
        "bench": session.bench,
        "guest_seconds": round(seconds, 2),
        "total_seconds": round(time.monotonic() - started, 2),
        "console_log": str(log) if keep else None,
    }
    if failures and not session.ended:
        report["console_tail"] = console_tail(log)
    if not keep:
        log.unlink(missing_ok=True)
    write_atomic(out_dir / "hooks.json", json.dumps(report, indent=1) + "\n")
    return HookLabResult(report=report, out_dir=out_dir, failures=failures)


class GuestBenchError(OmaticError):
    """A bench's guest failed: what failed, and the end of its console."""


def run_guest_bench(config: HookLabConfig) -> tuple[HookLabResult, dict[str, Any]]:
    """The hook lab with its bench on (`config.bench`): its result and the bench's
    figures; GuestBenchError when the lab fails or prints none."""
    result = run_hook_lab(config)
    figures = result.report["bench"]
    if not result.ok or figures is None:
        log = result.report["console_log"]
        raise GuestBenchError("\n  ".join(["the guest failed:", *result.failures]) +
                              "\nits console ended with:\n" +
                              (console_tail(Path(log), 80) if log else "(no log)"))
    return result, figures
