"""`pfq-omatic capture` without /dev/pfq: plans, pcap files tcpdump reads, workers forked
over fake endpoints (count, death, SIGTERM), and the command line's bad input."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from omatic.cli import main
from omatic.errors import UserError
from omatic.lab.frames import read_pcap, udp_frame
from omatic.pfq import capture
from omatic.pfq.capture import (
    CaptureOptions,
    PcapWriter,
    Shared,
    capture_loop,
    device_modes,
    output_path,
    parse_devices,
    parse_vlan,
    plan_capture,
    run_capture,
    set_device_mode,
)
from omatic.pfq.endpoint import Endpoint, EndpointStats, Frame, RingInfo

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parent.parent


# --- input ------------------------------------------------------------------------------

def test_output_names() -> None:
    assert output_path(Path("w.pcap"), 0) == Path("w.0.pcap")
    assert output_path(Path("out/run.tar.pcap"), 12) == Path("out/run.tar.12.pcap")
    assert output_path(Path("cap"), 1) == Path("cap.1")


def test_devices_and_vlans() -> None:
    assert parse_devices("eth0^eth1.100") == ("eth0", "eth1.100")
    for bad in ("", "eth0^", "a/b", "eth0^eth0", "x" * 16):
        with pytest.raises(UserError):
            parse_devices(bad)
    assert parse_vlan("10,20-22") == (frozenset({10, 20, 21, 22}), False)
    assert parse_vlan("untagged,0") == (frozenset({0}), True)
    assert parse_vlan("untagged") == (frozenset(), True)
    for bad in ("", "x", "4096", "5-3", "-1", "1,,2"):
        with pytest.raises(UserError, match="--vlan"):
            parse_vlan(bad)


def test_plan_precedence(tmp_path: Path) -> None:
    """The command line over the environment over the file; defaults last."""
    conf = tmp_path / "pcap.conf"
    conf.write_text("def_group = 11\nfanout@11 = rr\ncaplen = 128\ngroup_eth1 = 9\n")
    out = tmp_path / "w.pcap"

    def plan(env: dict[str, str], **options: Any) -> tuple[int, str, int]:
        p = plan_capture(CaptureOptions(devices="eth0", output=out, **options), env)
        return p.group, p.steer, p.caplen

    assert plan({}) == (0, "hash", 0)
    assert plan({}, config=conf) == (11, "rr", 128)
    assert plan({"PCAP_CONFIG": str(conf)}) == (11, "rr", 128)
    assert plan({"PCAP_GROUP": "5"}, config=conf) == (5, "hash", 128)
    assert plan({"PCAP_GROUP": "5", "PCAP_FANOUT": "cpu"}, config=conf) == (5, "cpu", 128)
    assert plan({"PCAP_GROUP": "5"}, config=conf, group=11, caplen=256) == (11, "rr", 256)
    assert plan({}, config=conf, steer="lb") == (11, "rr", 128)
    assert plan({"PCAP_GROUP_eth0": "9"}, config=conf) == (9, "hash", 128)
    p = plan_capture(CaptureOptions(devices="eth1", output=out, config=conf, vlan="7",
                                    filter="udp", workers=3, count=10), {})
    assert (p.group, p.vlan, p.untagged, p.workers, p.count) == (9, frozenset({7}), False,
                                                                 3, 10)
    assert p.program and p.program[-1] == (6, 0, 0, 0)
    assert p.files() == [tmp_path / f"w.{i}.pcap" for i in range(3)]


# --- files and devices ------------------------------------------------------------------

def test_pcap_files_are_read_by_tcpdump(tmp_path: Path) -> None:
    path = tmp_path / "w.0.pcap"
    writer = PcapWriter(path, 2048)
    assert path.stat().st_size == 24  # the header is out before any frame
    frames = [udp_frame(n) for n in range(5)]
    for n, frame in enumerate(frames):
        writer.add(1_700_000_000_123_456_789 + n, len(frame) + (100 if n == 4 else 0), frame)
    writer.close()
    assert read_pcap(path.read_bytes()) == frames
    run = subprocess.run(["tcpdump", "-r", str(path), "-nn", "-tt",
                          "--time-stamp-precision=nano"],
                         capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert len(lines) == 5, run.stdout
    assert lines[0].startswith("1700000000.123456789 IP 192.0.2.1.40000 > 192.0.2.2.9: UDP")
    assert lines[4].startswith("1700000000.123456793 ")


def test_device_modes_and_control_writes(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.write_text("dev=lo mode=pass queued=0 ring_slots=1024 snaplen=2048\n"
                       "dev=eth0 mode=tap queued=3 ring_slots=1024 snaplen=2048\n")
    assert device_modes(control) == {"lo": "pass", "eth0": "tap"}
    set_device_mode("eth0", "capture", control)
    assert control.read_text().startswith("eth0 capture\n")
    with pytest.raises(UserError, match=r"missing: is pfq.ko loaded\?"):
        device_modes(tmp_path / "nothing")
    with pytest.raises(UserError, match=r"nothing: eth0 tap: ENOENT"):
        set_device_mode("eth0", "tap", tmp_path / "nothing")


# --- workers over fake endpoints --------------------------------------------------------

class FakeEndpoint(Endpoint):
    """An endpoint whose ring always has frames (`limit` of them, then idles); it logs
    what the parent asks of it. `die_after`: SIGKILL itself after that many frames."""

    def __init__(self, log: Path, index: int, limit: int | None = None,
                 die_after: int | None = None) -> None:
        self.fd, self._ring, self._map, self._info = -1, None, None, None
        self.log, self.index, self.limit, self.die_after = log, index, limit, die_after
        self.taken = 0

    def _note(self, *what: object) -> None:
        with self.log.open("a") as f:
            f.write(" ".join(map(str, (self.index, *what))) + "\n")

    def ring(self, slots: int = 0, caplen: int = 0) -> RingInfo:
        self._note("ring", slots, caplen)
        return RingInfo(slots or 1024, caplen or 2048, 2080, 4096, 4096 + 1024 * 2080)

    def join(self, group: int) -> None:
        self._note("join", group)

    def bind(self, dev: str, queue: int = -1) -> None:
        self._note("bind", dev)

    def unbind(self, dev: str, queue: int = -1) -> None:
        self._note("unbind", dev)

    def steer(self, mode: str) -> None:
        self._note("steer", mode)

    def set_filter(self, program: Any) -> None:
        self._note("filter", len(program or ()))

    def set_vlan(self, ids: Any, untagged: bool = False) -> None:
        self._note("vlan", ids is not None, untagged)

    def stats(self) -> EndpointStats:
        return EndpointStats(self.taken + 1, self.taken, 1, 0)

    def records(self, timeout: float | None = None) -> Iterator[Frame]:
        while self.limit is None or self.taken < self.limit:
            if self.die_after is not None and self.taken >= self.die_after:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.001)
            self.taken += 1
            yield Frame(1_700_000_000_000_000_000 + self.taken, 100, 2, 0, 0,
                        udp_frame(self.index * 1000 + self.taken))
        time.sleep(timeout or 0)

    def close(self) -> None:
        pass


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A control file knowing eth0 (pass) and eth1 (tap); mode changes go to a log."""
    path = tmp_path / "control"
    path.write_text("dev=eth0 mode=pass queued=0 ring_slots=1024 snaplen=2048\n"
                    "dev=eth1 mode=tap queued=0 ring_slots=1024 snaplen=2048\n")

    def set_mode(dev: str, mode: str, control: Path | None = None) -> None:
        with (tmp_path / "modes.log").open("a") as f:
            f.write(f"{dev} {mode}\n")

    monkeypatch.setattr(capture, "set_device_mode", set_mode)
    monkeypatch.setattr(capture, "CONTROL", path)
    return path


def opener(log: Path, **per_index: dict[str, Any]) -> Callable[[], Endpoint]:
    """Fake endpoints, numbered as made; w<i>={...}: arguments of the i-th."""
    made: list[int] = []

    def make() -> Endpoint:
        made.append(len(made))
        return FakeEndpoint(log, made[-1], **per_index.get(f"w{made[-1]}", {}))
    return make


def plan(tmp_path: Path, **options: Any) -> capture.CapturePlan:
    return plan_capture(CaptureOptions(output=tmp_path / "w.pcap", **options), {})


def test_count_is_shared_by_the_workers(tmp_path: Path, control: Path) -> None:
    log = tmp_path / "calls.log"
    out = io.StringIO()
    p = plan(tmp_path, devices="eth0^eth1", workers=3, count=50, group=7, steer="rr",
             vlan="10", filter="udp")
    code = run_capture(p, out, opener(log))
    assert code == 0, out.getvalue()
    counts = [len(read_pcap(path.read_bytes())) for path in p.files()]
    assert sum(counts) == 50
    calls = log.read_text().splitlines()
    # Every endpoint sized and joined before the group is set up and bound (through the
    # first); nothing after: pfq.ko unbinds the group when the last endpoint leaves.
    assert calls[:6] == ["0 ring 0 0", "0 join 7", "1 ring 0 0", "1 join 7", "2 ring 0 0",
                         "2 join 7"]
    assert calls[6:11] == ["0 steer rr", f"0 filter {len(p.program or ())}",
                           "0 vlan True False", "0 bind eth0", "0 bind eth1"]
    assert calls[11:] == []
    # eth1 was in tap mode already: only eth0 changed, and went back.
    assert (tmp_path / "modes.log").read_text() == "eth0 tap\neth0 pass\n"
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("capturing on eth0^eth1 (tap mode): group 7, steer rr")
    for i, n in enumerate(counts):
        assert lines[1 + i].startswith(f"worker {i}: {n} frames, ")
    assert lines[-1] == "50 frames in 3 file(s)"


def test_a_worker_that_dies_gives_exit_code_2(tmp_path: Path, control: Path) -> None:
    out = io.StringIO()
    p = plan(tmp_path, devices="eth0", workers=2, duration=1.0, mode="capture")
    code = run_capture(p, out, opener(tmp_path / "calls.log", w1={"die_after": 3}))
    assert code == 2
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("worker 0: ") and "FAILED" not in lines[1]
    assert lines[2].startswith("worker 1: FAILED (killed by SIGKILL); ")
    # Its file holds whole records: the header and what was flushed.
    read_pcap((tmp_path / "w.1.pcap").read_bytes())
    assert (tmp_path / "modes.log").read_text() == "eth0 capture\neth0 pass\n"


def test_sigterm_stops_every_worker_with_complete_files(tmp_path: Path,
                                                        control: Path) -> None:
    p = plan(tmp_path, devices="eth0", workers=3)
    report = tmp_path / "out.txt"
    pid = os.fork()
    if pid == 0:  # the capture, as its own process: the test signals it
        code = 3
        try:
            with report.open("w") as out:
                code = run_capture(p, out, opener(tmp_path / "calls.log"))
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
            f.exists() and f.stat().st_size > 24 for f in p.files()):
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report.read_text()
    counts = [len(read_pcap(f.read_bytes())) for f in p.files()]
    assert all(counts), counts
    lines = report.read_text().splitlines()
    assert lines[-1] == f"{sum(counts)} frames in 3 file(s)"
    assert (tmp_path / "modes.log").read_text() == "eth0 tap\neth0 pass\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal(tmp_path: Path, control: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A line per worker redrawn in place, erased before the summary."""
    monkeypatch.setattr(capture._Progress, "PERIOD", 0.05)
    out = Terminal()
    p = plan(tmp_path, devices="eth0", workers=2, duration=0.5)
    assert run_capture(p, out, opener(tmp_path / "calls.log")) == 0
    text = out.getvalue()
    assert "\x1b[2Kworker 0: " in text and "\x1b[2Kworker 1: " in text
    assert "\x1b[2F\x1b[2Kworker 0: " in text  # drawn again over itself
    summary = text.rsplit("\x1b[2F\x1b[J", 1)[1]
    assert summary.splitlines()[0].startswith("worker 0: ")
    assert "\x1b" not in summary


def test_capture_loop_counts_overall(tmp_path: Path) -> None:
    """Two workers, one after the other, share --count 15: the second gets 5. (The first
    is stopped once its source ran dry: else it would wait for more.)"""
    def dry(source: FakeEndpoint) -> bool:
        return source.taken >= 10

    shared = Shared(2, tmp_path)
    for index in range(2):
        writer = PcapWriter(tmp_path / f"w.{index}.pcap", 2048)
        source = FakeEndpoint(tmp_path / "log", index, limit=10)
        capture_loop(source, writer, shared, index, partial(dry, source), None, 15)
    assert [shared.get(i)["frames"] for i in range(2)] == [10, 5]
    assert [len(read_pcap((tmp_path / f"w.{i}.pcap").read_bytes())) for i in range(2)] \
        == [10, 5]
    assert shared.get(1)["state"] == capture.DONE and shared.total() == 15
    shared.close()


def test_unknown_device_is_refused_before_anything_changes(tmp_path: Path,
                                                           control: Path) -> None:
    log = tmp_path / "calls.log"
    with pytest.raises(UserError, match=r"eth9: pfq\.ko does not know this device"):
        run_capture(plan(tmp_path, devices="eth0^eth9"), io.StringIO(), opener(log))
    assert not log.exists() and not (tmp_path / "modes.log").exists()


# --- the command line -------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--steer", "fast"], "unknown steering mode 'fast'"),
    (["--vlan", "10,x"], "--vlan '10,x': 'x' is not a VLAN id"),
    (["--workers", "0"], "--workers 0: expected 1..64"),
    (["--workers", "65"], "--workers 65: expected 1..64"),
    (["--count", "0"], "--count 0: expected at least 1"),
    (["--duration", "0"], "--duration 0.0: expected seconds above 0"),
    (["--caplen", "10"], "--caplen 10: expected 64..65535"),
    (["--group", "64"], "--group 64: expected 0..63"),
    (["--mode", "pass"], "argument --mode: invalid choice: 'pass'"),
    (["--filter", "udp and dst prt 9"], "unknown host 'prt'"),
    (["--config", "/nonexistent.conf"], "/nonexistent.conf: cannot read the configuration"),
    ([], r"is pfq.ko loaded\?"),
])
def test_bad_input_is_one_line_and_exit_1(args: list[str], message: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(capture, "CONTROL", tmp_path / "no-pfq" / "control")
    code = main(["capture", "eth0", "-w", str(tmp_path / "w.pcap"), *args])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("pfq-omatic: error: "), err
    assert re.search(message, err), err
    assert not list(tmp_path.glob("w*.pcap"))


def test_missing_w_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "eth0"]) == 1
    err = capsys.readouterr().err
    assert err == ("pfq-omatic: error: the following arguments are required: -w/--write "
                   "(see 'pfq-omatic capture --help')\n")


def test_capture_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """python3 -S (no site-packages: no jinja2, rich, tree-sitter) runs capture's path."""
    run = subprocess.run([sys.executable, "-S", "-m", "omatic", "capture", "--help"],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "--count N" in run.stdout, run.stderr
    run = subprocess.run([sys.executable, "-S", "-m", "omatic", "capture", "eth0", "-w",
                          str(tmp_path / "w.pcap"), "--workers", "0"],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert run.stderr == ("pfq-omatic: error: --workers 0: expected 1..64 (the endpoints a "
                          "group holds)\n")
    code = ("import sys, omatic.cli, omatic.pfq.capture, omatic.pfq.endpoint; "
            "print(sorted({'jinja2', 'rich', 'tree_sitter', 'elftools'} & set(sys.modules)))")
    run = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert run.stdout == "[]\n"
