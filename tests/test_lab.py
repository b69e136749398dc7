"""pfq-omatic lab: accelerated drivers proven in QEMU guests, and every way a lab can fail.

The vm tier boots Debian's 6.1 and 6.12 kernels under TCG (e1000e, ne2k-pci, virtio_net),
then breaks things on purpose: a NIC the driver does not drive, a frame that never
arrives, a guest that hangs, a guest that panics. It fails (never skips) when QEMU or a
boot image is missing. No QEMU started by these tests may outlive them.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import omatic.kernels.find
import omatic.kernels.kernel
import omatic.kernels.system
import omatic.lab.console
import omatic.lab.driver
import omatic.lab.vm
from guests import need_vm
from omatic.cli import main
from omatic.errors import InfraError
from omatic.kernels.kernel import Kernel
from omatic.lab import frames
from omatic.lab.driver import GuestHangError, GuestPanicError, LabConfig, run_lab
from omatic.lab.vm import (
    QEMU,
    Emulator,
    in_tree_needs,
    module_name,
    qemu_binary,
    qemu_command,
    qemu_version,
)
from omatic.templates import render

unit = pytest.mark.unit
vm = pytest.mark.vm

#: Drivers the vm tier proves, with the NIC model their manifest names.
#: e1000e and virtio_net: napi_gro_receive; ne2k-pci: netif_rx in its companion 8390, and a
#: module whose name has a dash where sysfs has an underscore. `make matrix` runs the rest.
LAB_DRIVERS = ("e1000e", "ne2k-pci", "virtio_net")
#: The stable top-level keys of lab.json.
REPORT_KEYS = {"tool", "version", "driver", "kernel", "nic_model", "frames_per_phase", "accel",
               "accel_reason", "qemu", "modules", "boot_seconds", "guest_seconds",
               "total_seconds", "checks", "failures", "ok", "console_log"}


# --- unit: frames, pcap, modules.dep, the command line, the template ---------------------


@unit
def test_frames_are_full_size_and_checksummed() -> None:
    b = frames.burst(10)
    assert (b.arp, b.icmp, b.udp) == (2, 4, 4)
    assert b.frames[0] == frames.arp_request()
    for frame in b.frames:
        assert len(frame) >= frames.MIN_FRAME
        if frame[12:14] == b"\x08\x00":
            assert frames.checksum(frame[14:34]) == 0  # a valid IPv4 header sums to 0
            assert frame[30:34] == frames.GUEST_IP
    udp = b.frames[3]
    assert frames.udp_payload(3) in udp and udp[36:38] == struct.pack("!H", frames.UDP_PORT)


@unit
def test_replies_are_told_apart() -> None:
    request = frames.echo_request(5)
    reply = bytearray(request)
    reply[0:6], reply[6:12] = frames.HOST_MAC, frames.GUEST_MAC
    reply[26:30], reply[30:34] = frames.GUEST_IP, frames.HOST_IP
    reply[34] = 0
    assert frames.classify(bytes(reply)) == "echo-reply"
    assert frames.classify(request) == "other"  # not from the guest
    arp = bytearray(frames.arp_request())
    arp[0:6], arp[6:12] = frames.HOST_MAC, frames.GUEST_MAC
    arp[20:22] = b"\x00\x02"
    arp[22:28], arp[28:32] = frames.GUEST_MAC, frames.GUEST_IP
    arp[32:38], arp[38:42] = frames.HOST_MAC, frames.HOST_IP
    assert frames.classify(bytes(arp)) == "arp-reply"


@unit
def test_pcap_round_trip_and_differences() -> None:
    sent = frames.burst(7).frames
    assert frames.read_pcap(frames.write_pcap(sent)) == list(sent)
    big_endian = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack(
        ">IIII", 1, 2, 3, 3) + b"abc"
    assert frames.read_pcap(big_endian) == [b"abc"]
    assert frames.first_difference(sent, list(sent)) == ""
    tampered = list(sent)
    tampered[4] = tampered[4][:40] + bytes([tampered[4][40] ^ 0xFF]) + tampered[4][41:]
    assert frames.first_difference(sent, tampered) == (
        f"frame 4: differs at byte 40 (sent {len(sent[4])} bytes, captured {len(sent[4])})")
    assert "6 frame(s) captured, 7 sent" in frames.first_difference(sent, tampered[:6])
    for bad in (b"short", b"\x00" * 24, frames.write_pcap(sent)[:-3]):
        with pytest.raises(frames.PcapError):
            frames.read_pcap(bad)


@unit
def test_in_tree_needs_orders_dependencies_and_adds_the_bus() -> None:
    p = Path("/x.ko")
    deps = {"virtio_net": (p, ("net_failover", "failover", "virtio", "virtio_ring")),
            "net_failover": (p, ("failover",)), "failover": (p, ()),
            "virtio": (p, ("virtio_ring",)), "virtio_ring": (p, ()),
            "virtio_pci": (p, ("virtio_pci_modern_dev", "virtio", "virtio_ring")),
            "virtio_pci_modern_dev": (p, ())}
    # 6.1: virtio is a module, so virtio_pci (which creates the device) must come too.
    order = in_tree_needs(["virtio_ring", "virtio", "net_failover", "pfq"], deps,
                          {"pfq", "virtio_net"})
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci")
    assert order.index("failover") < order.index("net_failover")
    assert set(order) == set(deps) - {"virtio_net"}
    # 6.12: virtio is built in (absent from modules.dep): only the failover pair.
    no_virtio = {k: v for k, v in deps.items() if not k.startswith("virtio")}
    assert in_tree_needs(["pfq", "net_failover"], no_virtio, {"pfq"}) == ["failover",
                                                                          "net_failover"]
    assert module_name("kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko.xz") == "e1000e"
    assert module_name("8139-too.ko") == "8139_too"


@unit
def test_qemu_command_stays_on_loopback(tmp_path: Path) -> None:
    cmd = qemu_command(Emulator("qemu"), "tcg", tmp_path / "vmlinuz", tmp_path / "initrd",
                       "e1000e", 40001, 40002)
    netdev = cmd[cmd.index("-netdev") + 1]
    assert "local.host=127.0.0.1,local.port=40001" in netdev
    assert "remote.host=127.0.0.1,remote.port=40002" in netdev
    assert cmd[cmd.index("-device") + 1] == "e1000e,netdev=n0,mac=52:54:00:12:34:56"
    assert "-enable-kvm" not in cmd and cmd[cmd.index("-accel") + 1] == "tcg"
    assert "-icount" not in cmd


@unit
def test_qemu_command_counts_instructions_when_asked(tmp_path: Path) -> None:
    """The bench's --count: one nanosecond of guest time per instruction, idle time
    skipped, so a span the guest measures is an instruction count."""
    cmd = qemu_command(Emulator("qemu"), "tcg", tmp_path / "vmlinuz", tmp_path / "initrd",
                       "", 0, 0, cpus=2, icount=True)
    assert cmd[cmd.index("-icount") + 1] == "shift=0,sleep=off"


@unit
def test_hook_lab_guest_that_counts_runs_the_bench_without_the_two_cpu_checks() -> None:
    """--count boots one vCPU: the checks that feed from two CPUs stay in the other
    guests, the bench and /init's own checks run in both."""
    def init(count_only: bool) -> str:
        return render("hooklab-init.sh.j2", release="6.1.0-56-amd64", module="pfq_hooktest",
                      slots=64, ring_memory_max=1 << 20, deps=[], dmesg_pattern="BUG",
                      python_path="/lib/pfq-omatic", groupcheck_config="/etc/groups.json",
                      bench="omatic.lab.rxbench", count_only=count_only, fuzz_seed=1,
                      pcap_libdir="/opt/libpcap/lib")

    timed, counted = init(False), init(True)
    for check in ("-m omatic.lab.groupcheck", "-m omatic.lab.safetycheck",
                  "-m omatic.lab.fuzzcheck", "-m omatic.lab.pcapcheck /opt/libpcap/lib"):
        assert check in timed and check not in counted
    for both in ("-m omatic.lab.rxbench", "check rmmod_pfq_clean", "OMATIC-KTAP-BEGIN hooks"):
        assert both in timed and both in counted


@unit
def test_init_template_uses_test_net_only() -> None:
    text = render("lab-init.sh.j2", driver="e1000e", release="6.1.0-56-amd64", frames=100,
                  wait_ticks=150, ring_slots=1024, ours=[], deps=[],
                  phases=omatic.lab.driver.PHASES,
                  guest_ip="192.0.2.2", host_ip="192.0.2.1", host_mac="02:00:00:00:00:01",
                  dmesg_pattern="|".join(omatic.lab.console.DMESG_BAD), pps=False, pfq_users=[],
                  fanout=True, fanout_workers=4, fanout_frames=128,
                  python_path="/lib/pfq-omatic")
    addresses = {word for word in text.replace("/", " ").split() if word.count(".") == 3
                 and all(part.isdigit() for part in word.split("."))}
    assert addresses == {"192.0.2.2", "192.0.2.1"}
    assert "phase capture capture" in text and "poweroff -f" in text
    assert "-m omatic capture $IF --workers 4" in text


# --- vm: real guests ------------------------------------------------------------------


@pytest.fixture(scope="session")
def lab_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab-out")


@pytest.fixture(autouse=True)
def _no_qemu_survives(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test's QEMU gets its initramfs under a temp dir of this session; afterwards no
    process may still name that dir (QEMUs of other sessions are left alone)."""
    tmp = tmp_path_factory.mktemp("labtmp")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    yield
    survivors = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if QEMU in cmdline and str(tmp) in cmdline:
            survivors.append(f"{proc.name}: {cmdline[:200]}")
    assert survivors == [], "QEMU outlived the lab"


def _lab_json(argv: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = main([*argv, "--json"], out=out)
    return code, json.loads(out.getvalue())


@vm
@pytest.mark.parametrize("driver", LAB_DRIVERS)
def test_lab_proves_the_driver(kernel: Kernel, driver: str, lab_out: Path) -> None:
    need_vm(kernel)
    code, data = _lab_json(["lab", driver, "--kernel", kernel.release, "--out", str(lab_out),
                            "-j", "2"])
    (report,) = data["labs"]
    assert code == 0, report["failures"]
    assert set(report) == REPORT_KEYS and report["ok"] and report["failures"] == []
    assert report["boot_seconds"] < 20 and report["guest_seconds"] < 60
    assert report["qemu"]["version"] == qemu_version(qemu_binary()) != ""
    assert report["qemu"]["system"] is None  # no NIC model here needs a newer QEMU
    checks = report["checks"]
    kname = module_name(driver)
    for name in ("bind_first", "bind_reload"):
        assert checks[name]["module"] == kname and checks[name]["build_id_matches"]
        assert checks[name]["pfq_holder"]
    n = report["frames_per_phase"]
    for phase, stack, captured in (("pass", n, 0), ("tap", n, n), ("capture", 0, n),
                                   ("reload", n, 0)):
        c = checks[phase]
        assert c["counters"] == {"rx_packets": n, "packets": n, "to_stack": stack,
                                 "captured": captured, "dropped": 0}, phase
        answered = phase != "capture"
        assert c["replies"]["arp-reply"] == (c["sent"]["arp"] if answered else 0), phase
        assert c["replies"]["echo-reply"] == (c["sent"]["icmp"] if answered else 0), phase
        if captured:
            assert c["pcap"] == {"bytes": c["pcap"]["bytes"], "frames": n,
                                 "equal_to_sent": True}
    assert checks["dmesg"]["bad_lines"] == []
    assert kname not in report["modules"]["in_tree"]
    assert ("8390" in report["modules"]["ours"]) == (driver == "ne2k-pci")
    assert ("virtio_pci" in report["modules"]["in_tree"]) == (
        driver == "virtio_net" and kernel.series == "6.1")
    out_dir = lab_out / kernel.release / driver
    assert json.loads((out_dir / "lab.json").read_text()) == report
    assert report["console_log"] is None and not (out_dir / "lab-console.log").exists()


@vm
def test_a_nic_the_driver_does_not_drive_fails_with_the_log_kept(
        lab_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = omatic.kernels.find.find_kernel("6.1")
    need_vm(kernel)
    code = main(["lab", "e1000e", "--kernel", "6.1", "--nic-model", "rtl8139",
                 "--out", str(lab_out), "-j", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no network device is bound to it" in err and "rtl8139" in err
    assert "0x10ec:0x8139" in err  # what the guest saw instead: the RTL8139 itself
    log = lab_out / kernel.release / "e1000e" / "lab-console.log"
    assert log.is_file() and "OMATIC" in log.read_text()
    report = json.loads(log.with_name("lab.json").read_text())
    assert not report["ok"] and report["console_log"] == str(log)


@vm
def test_a_lost_frame_fails_the_counters_and_the_pcap(
        lab_out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host drops the fourth frame of each phase (a UDP frame) behind the lab's back:
    the lab must see it missing everywhere it looks, and keep the evidence."""
    kernel = omatic.kernels.find.find_kernel("6.12")
    need_vm(kernel)
    send = omatic.lab.driver.Session.send
    counter = {"n": 0}

    def lossy(self: omatic.lab.driver.Session, frame: bytes) -> None:
        counter["n"] += 1
        if counter["n"] % 20 != 4:
            send(self, frame)

    monkeypatch.setattr(omatic.lab.driver.Session, "send", lossy)
    result = run_lab(LabConfig(driver="e1000e", kernel=kernel, nic_model="e1000e", frames=20,
                               out_root=lab_out, jobs=2, phase_wait=1.5))
    assert not result.ok
    text = "\n".join(result.failures)
    for phase in ("pass", "tap", "capture", "reload"):
        assert f"{phase}: the NIC received 19 of 20 frames" in text
    assert "tap: the pcap is not what was sent: 19 frame(s) captured, 20 sent" in text
    assert result.console_log is not None and result.console_log.is_file()
    assert (result.out_dir / "lab-tap-sent.pcap").is_file()


@vm
def test_a_guest_that_hangs_is_killed_and_its_console_shown(lab_out: Path) -> None:
    kernel = omatic.kernels.find.find_kernel("6.1")
    need_vm(kernel)
    with pytest.raises(GuestHangError) as info:
        run_lab(LabConfig(driver="e1000e", kernel=kernel, nic_model="e1000e",
                          out_root=lab_out, jobs=2, timeout=4))
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "the guest hung: no end after 4 s" in message and "last lines" in message
    assert (lab_out / kernel.release / "e1000e" / "lab-console.log").is_file()


@vm
def test_a_guest_that_panics_is_reported(lab_out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = omatic.kernels.find.find_kernel("6.12")
    need_vm(kernel)
    crash = ("#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n"
             "echo c > /proc/sysrq-trigger\n")
    monkeypatch.setattr(omatic.lab.driver, "render", lambda name, **ctx: crash)
    with pytest.raises(GuestPanicError) as info:
        run_lab(LabConfig(driver="e1000e", kernel=kernel, nic_model="e1000e",
                          out_root=lab_out, jobs=2, timeout=60))
    message = str(info.value)
    assert "panicked" in message and "Kernel panic - not syncing: sysrq triggered crash" in message
    assert info.value.exit_code == 2 and "last lines of the console" in message


@vm
def test_bad_input_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["lab", "e1000e", "--kernel", "6.1", "--nic-model", "e1000x"]) == 1
    err = capsys.readouterr().err
    assert "unknown NIC model 'e1000x'" in err and "virtio-net-pci" in err

    monkeypatch.setattr(omatic.kernels.kernel, "BOOT_ROOT", tmp_path)
    release = omatic.kernels.find.find_kernel("6.12").release
    assert main(["lab", "e1000e", "--kernel", "6.12"]) == 2
    assert f"install the Debian package linux-image-{release}" in capsys.readouterr().err

    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["lab", "e1000e", "--kernel", "6.12"]) == 2
    assert "install the Debian package qemu-system-x86" in capsys.readouterr().err
    assert os.environ["PATH"] == str(tmp_path)


@unit
def test_a_nic_model_newer_than_this_qemu_runs_in_a_kept_systems_qemu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {None: "7.2.22", tmp_path: "10.0.13"}
    made: list[str] = []
    monkeypatch.setattr(omatic.lab.vm, "qemu_binary", lambda: Emulator("/usr/bin/qemu"))
    monkeypatch.setattr(omatic.lab.vm, "qemu_version", lambda emu: versions[emu.root])
    monkeypatch.setattr(omatic.kernels.system, "ensure_root",
                        lambda spec, note=None: made.append(spec.suite.name) or tmp_path)
    assert omatic.lab.vm.emulator_for("").root is None
    assert omatic.lab.vm.emulator_for("7.0").root is None and made == []
    newer = omatic.lab.vm.emulator_for("8.0")
    assert (newer.root, newer.suite, made) == (tmp_path, "trixie", ["trixie"])
    # It runs in that system, with the kernel's and the initramfs's folders bound in.
    cmd = qemu_command(newer, "tcg", tmp_path / "boot/vmlinuz", tmp_path / "t/initrd", "igb",
                       40001, 40002)
    assert cmd[cmd.index("chroot") + 1] == str(tmp_path)
    assert ["--bind", str(tmp_path / "boot"), str(tmp_path / "boot")] == cmd[
        cmd.index("--bind"):cmd.index("--bind") + 3]
    assert "/usr/bin/qemu-system-x86_64" in cmd and "igb,netdev=n0,mac=52:54:00:12:34:56" in cmd
    versions[tmp_path] = "7.2.1"
    with pytest.raises(InfraError, match=r"QEMU 9\.0 or newer is needed"):
        omatic.lab.vm.emulator_for("9.0")


@pytest.mark.unit
def test_a_typo_gets_the_drivers_the_lab_knows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "e100e"]) == 1
    err = capsys.readouterr().err
    assert "did you mean e1000e" in err and len(err.splitlines()) == 1


@pytest.mark.unit
@pytest.mark.parametrize("command", ["lab", "hooks"])
@pytest.mark.parametrize("seconds", ["0", "-3", "0.5", "nan"])
def test_a_timeout_under_a_second_is_refused(command: str, seconds: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [command, "e1000e"] if command == "lab" else [command]
    assert main([*argv, "--timeout", seconds]) == 1
    err = capsys.readouterr().err
    assert "at least 1 second" in err and len(err.splitlines()) == 1


@pytest.mark.unit
@pytest.mark.parametrize("keep", [False, True])
def test_an_interrupted_guest_keeps_its_log_only_when_asked(tmp_path: Path, keep: bool) -> None:
    from omatic.lab.console import log_kept_only_if

    log = tmp_path / "lab-console.log"
    with pytest.raises(KeyboardInterrupt), log_kept_only_if(keep, log):
        log.write_text("booting\n")
        raise KeyboardInterrupt
    assert log.exists() == keep
