"""The lab's fan-out phase: `pfq-omatic capture` with 4 workers on the accelerated NIC.

After its pass, tap and capture phases, the lab's guest runs `pfq-omatic capture IF
--workers 4 --steer hash -w /tmp/w.pcap` in this machine's python3 (omatic.lab.guestpy),
waits until its group has 4 endpoints bound to the NIC, and announces the phase; the host
sends FLOWS UDP flows of PER_FLOW frames each (frames.flows_burst) through the NIC. Once
the workers' rings are empty the guest interrupts the capture as Ctrl-C would, and sends
the 4 pcap files back on the console. Here they must hold, together, exactly the frames
sent, each flow wholly in one file, and tcpdump must read each of them. The guest also
reports the NIC's receive counters, PFQ's device, group and endpoint counters, so that a
lost frame is placed (the emulated NIC, PFQ's hooks, a full ring, a worker) from figures.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from omatic.lab import frames

#: Worker processes, and the traffic of the phase.
WORKERS = 4
FLOWS = 32
PER_FLOW = 4
#: Seconds between two of its frames: the guest runs 4 workers meanwhile, and under TCG a
#: NIC with a small ring (ne2k-pci) dropped frames sent 1 ms apart.
FRAME_GAP = 0.01
PHASE = "fanout"


def pcap_name(worker: int) -> str:
    """The name under which the guest sends worker `worker`'s file."""
    return f"{PHASE}.{worker}"


def _tcpdump_reads(data: bytes, keep_as: Path | None) -> tuple[int | None, str]:
    """How many frames tcpdump -r reads from `data` (None when it fails) and why not."""
    tcpdump = shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin")
    if tcpdump is None:
        return None, "tcpdump is not installed (make setup)"
    with tempfile.TemporaryDirectory(prefix="pfq-omatic-fanout-") as tmp:
        path = keep_as or Path(tmp) / "w.pcap"
        path.write_bytes(data)
        run = subprocess.run([tcpdump, "-nr", str(path)], capture_output=True, text=True,
                             check=False, timeout=60)
    if run.returncode != 0:
        return None, run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"
    return len(run.stdout.splitlines()), ""


def check_fanout(sent: tuple[bytes, ...] | None, pcaps: dict[str, bytes],
                 guest: dict[str, Any] | None, keep_in: Path | None
                 ) -> tuple[dict[str, Any], list[str]]:
    """The figures of the fan-out phase and what is wrong with them; with `keep_in`, the
    workers' files are kept there as lab-fanout.<i>.pcap."""
    if sent is None or guest is None:
        return {"ran": False}, [f"{PHASE}: the guest never reported this phase"]
    problems: list[str] = []
    if guest.get("status") != 0:
        problems.append(f"pfq-omatic capture exited {guest.get('status')}")
    shares: list[list[bytes]] = []
    read_by_tcpdump: list[int | None] = []
    for worker in range(WORKERS):
        data = pcaps.get(pcap_name(worker))
        if data is None:
            problems.append(f"worker {worker}'s file did not come back")
            shares.append([])
            read_by_tcpdump.append(None)
            continue
        try:
            shares.append(frames.read_pcap(data))
        except frames.PcapError as err:
            problems.append(f"worker {worker}'s file is unreadable: {err}")
            shares.append([])
        keep_as = keep_in / f"lab-{pcap_name(worker)}.pcap" if keep_in else None
        count, why = _tcpdump_reads(data, keep_as)
        read_by_tcpdump.append(count)
        if count != len(shares[-1]):
            problems.append(f"tcpdump -r read {count} frames of worker {worker}'s "
                            f"{len(shares[-1])}" + (f": {why}" if why else ""))
    union = sorted(f for share in shares for f in share)
    if union != sorted(sent):
        problems.append(f"the workers' files hold {len(union)} frames, {len(sent)} were "
                        "sent (or their bytes differ)")
    owners: dict[int, set[int]] = {}
    for worker, share in enumerate(shares):
        for frame in share:
            owners.setdefault(frames.flow_of(frame), set()).add(worker)
    split = sorted(flow for flow, workers in owners.items() if len(workers) > 1)
    if split:
        problems.append(f"flows split between workers: {split[:5]}")
    path = where_frames_went(guest, len(sent), sum(len(share) for share in shares))
    if len(union) != len(sent) and path.get("lost_at"):
        problems.append(f"{len(sent) - len(union)} frames lost: {path['lost_at']}")
    figures = {"ran": True, "workers": WORKERS, "flows": FLOWS, "sent": len(sent),
               "shares": [len(s) for s in shares], "tcpdump_read": read_by_tcpdump,
               "flows_split": len(split), "capture_status": guest.get("status"),
               "path": path}
    return figures, [f"{PHASE}: {p}" for p in problems]


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def where_frames_went(guest: dict[str, Any], sent: int, in_files: int) -> dict[str, Any]:
    """How many of the `sent` frames each stage passed on, from the counters the guest
    read before the workers stopped: the NIC (rx_packets, and what it says it lost), PFQ's
    hooks on the device, group 0, its endpoints' rings, and the workers' files. `lost_at`
    names the first stage that passed on fewer than it got ('' when none did)."""
    if "nic_after" not in guest:
        return {}
    nic = {k: guest["nic_after"][k] - guest["nic_before"][k] for k in guest["nic_after"]}
    hooks = guest["pfq_after"]["packets"] - guest["pfq_before"]["packets"]
    lines = [_fields(line) for line in guest.get("groups", [])]
    group = next((f for f in lines if "endpoint" not in f), {})
    endpoints = [f for f in lines if "endpoint" in f]
    ring_delivered = sum(int(f["delivered"]) for f in endpoints)
    ring_dropped = sum(int(f["dropped"]) for f in endpoints)
    stages = [("sent by the host", sent), ("taken by the NIC", nic["rx_packets"]),
              ("seen by PFQ's hooks", hooks),
              ("received by group 0", int(group.get("received", 0))),
              ("put in the workers' rings", ring_delivered),
              ("written by the workers", in_files)]
    lost_at = ""
    for (before, got), (stage, passed) in itertools.pairwise(stages):
        if passed < got:
            lost_at = f"{got} {before}, {passed} {stage}"
            if stage == "taken by the NIC":
                lost_at += f" (its counters: {nic})"
            elif stage == "put in the workers' rings":
                lost_at += f" ({ring_dropped} dropped: rings full)"
            break
    return {"stages": dict(stages), "nic": nic, "ring_dropped": ring_dropped,
            "endpoints": [{k: int(f[k]) for k in ("received", "delivered", "dropped")}
                          for f in endpoints], "lost_at": lost_at}
