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
