#!/usr/bin/env python3
"""Receive rate of an accelerated driver against Debian's own module, in one QEMU guest.

Usage: bench/lab_pps.py [DRIVER] [--kernel KVER] [--rounds R] [--seconds S]

One boot of Debian's kernel (the lab's setup: same initramfs, NIC model and dgram netdev
on 127.0.0.1). The guest loads the in-tree driver, brings the NIC up, and says so; the
host sends UDP frames (TEST-NET-1) as fast as it can; the guest counts rx_packets over S
seconds, unloads, then does the same with pfq.ko and the accelerated driver (PFQ in pass
mode: the hook counts and calls the kernel function). Each of R rounds runs both, odd
rounds the in-tree driver first, even rounds ours, so drift in the emulator hits both
alike. Prints frames per second per turn, the medians and the
ratio accelerated / in-tree (target >= 0.98). Exit 0 when the ratio meets the target.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from omatic.build.pipeline import BuildRequest, build_driver, ensure_kmod
from omatic.kernels.find import default_kernel, find_kernel
from omatic.lab import frames
from omatic.lab.console import DMESG_BAD, run_guest
from omatic.lab.driver import PHASES, Session, guest_modules
from omatic.lab.vm import (
    GuestModule,
    build_initramfs,
    check_nic_model,
    choose_accel,
    in_tree_needs,
    qemu_binary,
    qemu_command,
    read_modules_dep,
    udp_ports,
)
from omatic.manifests import resolve
from omatic.templates import render

TARGET = 0.98


class PpsSession(Session):
    """Blasts frames at the guest between its pps-start and pps-done, records the rates."""

    def __init__(self, sock: socket.socket, guest_port: int, limit: float,
                 rate: int) -> None:
        super().__init__(sock, guest_port)
        self.limit = limit
        self.rate = rate
        self.turns: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None
        self._batch = [frames.udp_frame(i) for i in range(64)]
        self.sent = 0

    def _blast(self) -> None:
        """Offer `rate` frames/s (above what the guest takes under TCG, so the guest is
        the bottleneck, but without a spinning sender stealing the emulator's core)."""
        start = time.monotonic()
        deadline = start + self.limit  # bounded even if the guest goes quiet
        target = ("127.0.0.1", self.guest_port)
        sent = 0
        while not self._stop.is_set() and (now := time.monotonic()) < deadline:
            ahead = sent / self.rate - (now - start)
            if ahead > 0:
                time.sleep(ahead)
            for frame in self._batch:
                with contextlib.suppress(BlockingIOError):
                    self.sock.sendto(frame, target)
                    sent += 1
            self._drain(None)
        self.sent += sent

    def on_event(self, event: dict[str, Any]) -> None:
        super().on_event(event)
        if event.get("event") == "pps-start":
            self._stop.clear()
            self._sender = threading.Thread(target=self._blast, daemon=True)
            self._sender.start()
        elif event.get("event") == "pps-done":
            self.stop()
            seconds = event["centiseconds"] / 100
            self.turns.append({"variant": event["variant"], "round": event["round"],
                               "frames": event["rx"], "seconds": seconds,
                               "pps": event["rx"] / seconds if seconds else 0.0})
            print(f"  round {event['round']} {event['variant']:11} {event['rx']:8d} frames "
                  f"in {seconds:.2f} s = {self.turns[-1]['pps']:9.0f} frames/s", flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._sender is not None:
            self._sender.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("driver", nargs="?", default="e1000e")
    parser.add_argument("--kernel", help="release or series (default: as pfq-omatic build)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4, help="measured seconds per turn")
    parser.add_argument("--rate", type=int, default=150_000,
                        help="frames/s offered (default 150000: more than TCG takes)")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args(argv)

    name, manifest = resolve(args.driver)
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    model = manifest.nic_model if manifest else ""
    qemu = qemu_binary()
    check_nic_model(qemu, model)
    vmlinuz = kernel.boot_image
    if vmlinuz is None:
        print(f"no /boot/vmlinuz-{kernel.release}: install linux-image-{kernel.release}")
        return 2
    built = build_driver(BuildRequest(driver=name, kernel=kernel, out_root=args.out, jobs=2))
    kmod = ensure_kmod(kernel, 2)
    deps, ours = guest_modules(name, kernel, kmod.ko, built.modules)
    table = read_modules_dep(kernel)
    vanilla = GuestModule(name, table[name][0], f"modules/vanilla-{name}.ko", built=False)
    for extra in in_tree_needs(list(table[name][1]), table, {m.name for m in ours}):
        if extra not in {m.name for m in deps}:
            deps.append(GuestModule(extra, table[extra][0], f"modules/{extra}.ko", built=False))
    accel, why = choose_accel(qemu, "auto", vmlinuz)
    print(f"{name} on {kernel.release}, NIC model {model}, {accel} ({why}); "
          f"{args.rounds} round(s) of {args.seconds} s per driver", flush=True)
    log = Path(tempfile.gettempdir()) / f"lab_pps-{name}-{kernel.release}.log"
    with tempfile.TemporaryDirectory(prefix="pfq-omatic-lab-") as tmp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        host_port, guest_port = udp_ports(sock)
        init = render("lab-init.sh.j2", driver=name, release=kernel.release, frames=0,
                      wait_ticks=0, ring_slots=1024, ours=ours, deps=deps, phases=PHASES,
                      guest_ip=frames.ip_text(frames.GUEST_IP),
                      host_ip=frames.ip_text(frames.HOST_IP),
                      host_mac=frames.mac_text(frames.HOST_MAC),
                      dmesg_pattern="|".join(DMESG_BAD), pps=True, vanilla=vanilla, pfq_users=[],
                      pps_rounds=args.rounds, pps_seconds=args.seconds)
        initrd = Path(tmp) / "initrd.cpio"
        build_initramfs(Path(tmp) / "root", initrd, init, [*deps, *ours, vanilla])
        cmd = qemu_command(qemu, accel, vmlinuz, initrd, model, guest_port, host_port)
        session = PpsSession(sock, guest_port, limit=args.seconds + 15, rate=args.rate)
        timeout = 60 + args.rounds * 2 * (args.seconds + 10)
        try:
            status, _stderr, seconds = run_guest(cmd, session, log, timeout)
        finally:
            session.stop()
    if not session.ended or session.failure:
        print(f"the guest did not finish (QEMU exit {status}); console log: {log}")
        return 2
    rates = {v: [t["pps"] for t in session.turns if t["variant"] == v]
             for v in ("vanilla", "accelerated")}
    if not all(rates.values()):
        print(f"no measurements; console log: {log}")
        return 2
    vanilla_pps = statistics.median(rates["vanilla"])
    accel_pps = statistics.median(rates["accelerated"])
    ratio = accel_pps / vanilla_pps
    per_round = [a / v for a, v in zip(rates["accelerated"], rates["vanilla"], strict=True)]
    for label, variant, median in (("in-tree", "vanilla", vanilla_pps),
                                   ("accelerated", "accelerated", accel_pps)):
        turns = ", ".join(f"{r:.0f}" for r in rates[variant])
        print(f"{label} {name}: median {median:.0f} frames/s ({turns})")
    print(f"ratio accelerated / in-tree: {ratio:.3f} (per round: "
          f"{', '.join(f'{r:.3f}' for r in per_round)}; target >= {TARGET}); "
          f"{session.sent} frames offered at {args.rate}/s, guest ran {seconds:.0f} s")
    for line in session.dmesg:
        print("dmesg:", line)
    return 0 if ratio >= TARGET and not session.dmesg else 1


if __name__ == "__main__":
    sys.exit(main())
