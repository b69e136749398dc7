"""The lab's fan-out phase, judged on the host: the workers' files against what was sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from omatic.lab import frames
from omatic.lab.fanout_phase import FLOWS, PER_FLOW, WORKERS, check_fanout, pcap_name

pytestmark = pytest.mark.unit
SENT = frames.flows_burst(FLOWS, PER_FLOW).frames


def _files(shares: list[list[bytes]]) -> dict[str, bytes]:
    return {pcap_name(i): frames.write_pcap(share) for i, share in enumerate(shares)}


def _by_flow() -> list[list[bytes]]:
    shares: list[list[bytes]] = [[] for _ in range(WORKERS)]
    for frame in SENT:
        shares[frames.flow_of(frame) % WORKERS].append(frame)
    return shares


def test_flows_are_told_apart_by_source_port() -> None:
    assert len(SENT) == FLOWS * PER_FLOW
    assert sorted({frames.flow_of(f) for f in SENT}) == list(range(FLOWS))


def test_files_that_split_the_flows_whole_pass(tmp_path: Path) -> None:
    figures, problems = check_fanout(SENT, _files(_by_flow()), {"status": 0}, tmp_path)
    assert problems == []
    assert figures["shares"] == figures["tcpdump_read"] == [PER_FLOW * FLOWS // WORKERS] * 4
    assert (tmp_path / "lab-fanout.0.pcap").is_file()  # kept where asked


def test_a_flow_in_two_files_a_lost_frame_and_a_bad_exit_fail() -> None:
    shares = _by_flow()
    shares[1].append(shares[0].pop())          # one frame of a flow of worker 0 moves
    lost = shares[2].pop()                      # one frame is gone
    _, problems = check_fanout(SENT, _files(shares), {"status": 2}, None)
    text = "\n".join(problems)
    assert "fanout: pfq-omatic capture exited 2" in text
    assert f"fanout: the workers' files hold {len(SENT) - 1} frames, {len(SENT)} were sent" \
        in text
    assert "fanout: flows split between workers: [" in text
    assert lost not in [f for share in shares for f in share]


def test_a_missing_or_unreadable_file_fails() -> None:
    files = _files(_by_flow())
    del files[pcap_name(3)]
    files[pcap_name(0)] = files[pcap_name(0)][:30]  # cut inside the first record
    _, problems = check_fanout(SENT, files, {"status": 0}, None)
    text = "\n".join(problems)
    assert "worker 3's file did not come back" in text
    assert "worker 0's file is unreadable" in text


def test_a_phase_the_guest_never_reported() -> None:
    figures, problems = check_fanout(None, {}, None, None)
    assert figures == {"ran": False}
    assert problems == ["fanout: the guest never reported this phase"]


def _guest(nic_rx: int, hooks: int, group: int, rings: list[tuple[int, int]]) -> dict:
    """What the guest reports: counters before (0) and after the phase."""
    zero = {"rx_packets": 0, "rx_dropped": 0, "rx_missed_errors": 0, "rx_fifo_errors": 0,
            "rx_over_errors": 0, "rx_errors": 0}
    lines = [(f"group=0 steer=hash endpoints={len(rings)} bpf=0 vlan=off received={group} "
              f"filtered=0 delivered={group} dropped=0 devices=eth0")]
    lines += [f"endpoint={i} pid=9 group=0 slots=1024 caplen=2048 queued=0 received={d + x} "
              f"delivered={d} dropped={x}" for i, (d, x) in enumerate(rings)]
    return {"status": 0, "nic_before": zero,
            "nic_after": {**zero, "rx_packets": nic_rx, "rx_missed_errors": len(SENT) - nic_rx},
            "pfq_before": {"packets": 5}, "pfq_after": {"packets": 5 + hooks},
            "groups": lines}


def test_a_loss_is_placed_at_the_first_stage_that_passed_on_less() -> None:
    shares = _by_flow()
    short = [shares[0][:-8], *shares[1:]]
    n = len(SENT)
    _, problems = check_fanout(SENT, _files(short), _guest(n - 8, n - 8, n - 8,
                                                           [(n // 4, 0)] * 4), None)
    assert any(p.startswith(f"fanout: 8 frames lost: {n} sent by the host, {n - 8} taken "
                            "by the NIC (its counters: ") and "'rx_missed_errors': 8" in p
               for p in problems), problems
    figures, problems = check_fanout(SENT, _files(short), _guest(
        n, n, n, [(n // 4 - 8, 8)] + [(n // 4, 0)] * 3), None)
    assert (f"fanout: 8 frames lost: {n} received by group 0, {n - 8} put in the workers' "
            "rings (8 dropped: rings full)") in problems
    assert figures["path"]["stages"]["written by the workers"] == n - 8
    _, problems = check_fanout(SENT, _files(short), _guest(n, n, n, [(n // 4, 0)] * 4), None)
    assert (f"fanout: 8 frames lost: {n} put in the workers' rings, {n - 8} written by the "
            "workers") in problems
