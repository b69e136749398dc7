#!/usr/bin/env python3
"""Runtime proof of pfq.ko: boot a Debian kernel in QEMU with an accelerated e1000e.

Usage: bench/kmod_proof.py VMLINUZ PFQ_KO E1000E_KO OUTDIR

Builds an initramfs (busybox-static, pfq.ko, the e1000e built against pfq's
Module.symvers, bench/kmod_proof_init.sh as /init), boots it under TCG, and for each
phase the guest announces (pass, tap, capture, overflow) sends that many ICMP echo
requests for 192.0.2.2 as UDP datagrams to 127.0.0.1, which QEMU's dgram netdev turns
into frames received by the NIC. The guest's replies come back the same way and are
counted. Prints the guest's counters and checks, writes each phase's pcap stream to
OUTDIR/<phase>.pcap, then checks the figures each mode must give; exit 0 when all hold.
A stop-gap until `pfq-omatic lab`: it knows one NIC and one scenario.
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Host ports of the dgram netdev: datagrams to PORT_IN become received frames,
#: frames the guest sends arrive as datagrams on PORT_OUT. Loopback only.
PORT_IN, PORT_OUT = 47001, 47002
GUEST_MAC = bytes.fromhex("525400123456")
HOST_MAC = bytes.fromhex("020000000001")
INIT = Path(__file__).with_name("kmod_proof_init.sh")
#: Frames the guest asks for in each phase, and the ring size it loads pfq.ko with.
PHASES = {"pass": 200, "tap": 200, "capture": 200, "overflow": 300}
RING_SLOTS = 256


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_frame(seq: int) -> bytes:
    """Ethernet + IPv4 + ICMP echo request, 192.0.2.1 -> 192.0.2.2 (TEST-NET-1), 98 bytes."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x7071, seq & 0xFFFF) + struct.pack("!I", seq)
    icmp += bytes(52)
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq & 0xFFFF, 0, 64, 1, 0,
                     bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return GUEST_MAC + HOST_MAC + b"\x08\x00" + ip + icmp


def is_echo_reply(frame: bytes) -> bool:
    return (len(frame) > 34 and frame[12:14] == b"\x08\x00" and frame[23] == 1
            and frame[34] == 0)


def initramfs(pfq_ko: Path, e1000e_ko: Path, out: Path) -> None:
    """A newc cpio with busybox, the two modules and the proof's /init."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy("/bin/busybox", root / "bin/busybox")
        shutil.copy(INIT, root / "init")
        (root / "init").chmod(0o755)
        shutil.copy(pfq_ko, root / "pfq.ko")
        shutil.copy(e1000e_ko, root / "e1000e.ko")
        names = "\n".join(str(p.relative_to(root)) for p in sorted(root.rglob("*")))
        with open(out, "wb") as f:
            subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                           input=names.encode(), stdout=f, check=True)


def qemu_command(vmlinuz: Path, initrd: Path) -> list[str]:
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "2",
        "-nographic", "-no-reboot", "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet",
        "-netdev", (f"dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={PORT_IN},"
                    f"remote.type=inet,remote.host=127.0.0.1,remote.port={PORT_OUT}"),
        "-device", "e1000e,netdev=n0,mac=52:54:00:12:34:56",
    ]


class Lab:
    """Drives one boot: answers the guest's PFQ-READY lines, records what it prints."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.replies = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.replies.bind(("127.0.0.1", PORT_OUT))
        self.replies.setblocking(False)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.seq = 0
        self.phase = ""
        self.echo_replies: dict[str, int] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.checks: dict[str, str] = {}
        self.pcap_lines: list[str] | None = None

    def drain_replies(self) -> int:
        count = 0
        while True:
            try:
                count += is_echo_reply(self.replies.recv(65536))
            except BlockingIOError:
                return count

    def send(self, frames: int) -> None:
        for _ in range(frames):
            self.sender.sendto(echo_frame(self.seq), ("127.0.0.1", PORT_IN))
            self.seq += 1
            time.sleep(0.002)  # the emulated NIC has 256 RX descriptors; do not outrun it

    def line(self, line: str) -> None:
        if self.pcap_lines is not None and not line.startswith("PFQ-PCAP-END"):
            self.pcap_lines.append(line)
        elif m := re.search(r"PFQ-READY (\S+) (\d+)", line):
            self.phase = m[1]
            self.drain_replies()
            self.send(int(m[2]))
        elif line.startswith("PFQ-PCAP-BEGIN"):
            self.pcap_lines = []
        elif m := re.match(r"PFQ-PCAP-END (\S+)", line):
            data = base64.b64decode("".join(self.pcap_lines or []))
            (self.outdir / f"{m[1]}.pcap").write_bytes(data)
            self.pcap_lines = None
        elif m := re.match(r"PFQ-STATS (\S+) dev=eth0 hook=napi_gro_receive (.*)", line):
            self.stats[m[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])}
        elif m := re.match(r"PFQ-CHECK (\S+) (.*)", line):
            self.checks[m[1]] = m[2].strip()
        elif line.startswith("PFQ-DONE"):
            time.sleep(0.5)
            self.echo_replies[self.phase] = self.drain_replies()
            print(f"PFQ-HOST {self.phase} echo_replies={self.echo_replies[self.phase]}")


def pcap_frames(path: Path) -> int:
    """Frames in a pcap file as tcpdump reads them (-1 when tcpdump rejects it)."""
    with open(path, "rb") as f:
        run = subprocess.run(["tcpdump", "-nn", "-r", "-"], stdin=f, capture_output=True,
                             text=True, check=False)
    return len(run.stdout.splitlines()) if run.returncode == 0 else -1


def verdicts(lab: Lab) -> list[str]:
    """What each phase must show; the failures, as sentences."""
    failures = []
    before = {"packets": 0, "to_stack": 0, "captured": 0, "dropped": 0}
    expect = {  # phase: (to_stack, captured, dropped, replies, pcap frames)
        "pass": (200, 0, 0, 200, 0),
        "tap": (200, 200, 0, 200, 200),
        "capture": (0, 200, 0, 0, 200),
        "overflow": (0, RING_SLOTS, PHASES["overflow"] - RING_SLOTS, 0, RING_SLOTS),
    }
    for phase, (to_stack, captured, dropped, replies, frames) in expect.items():
        now = lab.stats.get(phase)
        if now is None:
            failures.append(f"{phase}: no counters")
            continue
        got = (now["to_stack"] - before["to_stack"], now["captured"] - before["captured"],
               now["dropped"] - before["dropped"], lab.echo_replies.get(phase, -1),
               pcap_frames(lab.outdir / f"{phase}.pcap"))
        seen = now["packets"] - before["packets"]
        print(f"PFQ-SUMMARY {phase}: {seen}/{PHASES[phase]} frames through pfq_gro_receive, "
              f"to_stack={got[0]} captured={got[1]} dropped={got[2]} echo_replies={got[3]} "
              f"pcap_frames={got[4]}")
        if seen != PHASES[phase] or got != (to_stack, captured, dropped, replies, frames):
            failures.append(f"{phase}: expected {(to_stack, captured, dropped, replies, frames)}"
                            f", got {got}")
        before = now
    wanted = {"bad-device": "rejected", "bad-mode": "rejected", "rmmod-e1000e": "ok",
              "rmmod-pfq": "ok"}
    failures += [f"{k}: {lab.checks.get(k)!r}" for k, v in wanted.items() if lab.checks.get(k) != v]
    if "eth0" in lab.checks.get("pcap-files-after", "eth0"):
        failures.append("pcap/eth0 outlived the device")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("vmlinuz", type=Path)
    parser.add_argument("pfq_ko", type=Path)
    parser.add_argument("e1000e_ko", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    initrd = args.outdir / "initrd.cpio"
    initramfs(args.pfq_ko, args.e1000e_ko, initrd)
    cmd = qemu_command(args.vmlinuz, initrd)
    print("$", " ".join(cmd), flush=True)
    lab = Lab(args.outdir)
    start = time.monotonic()
    with open(args.outdir / "console.log", "wb") as log, subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) as qemu:
        if qemu.stdout is None:
            raise RuntimeError("no pipe from qemu")
        for raw in qemu.stdout:
            log.write(raw)
            line = raw.decode(errors="replace").strip()
            lab.line(line)
            if lab.pcap_lines is None and re.match(r"PFQ-(STATS|CONTROL|CHECK|DMESG|FAIL)",
                                                   line):
                print(line, flush=True)
            if time.monotonic() - start > args.timeout:
                qemu.kill()
                print(f"timed out after {args.timeout:.0f} s")
                return 2
    elapsed = time.monotonic() - start
    print(f"PFQ-HOST boot to poweroff: {elapsed:.1f} s, qemu exit {qemu.returncode}")
    failures = verdicts(lab)
    for failure in failures:
        print("FAIL", failure)
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
