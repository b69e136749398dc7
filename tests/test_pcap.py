"""PFQ's capture source for libpcap (libpcap/, omatic.pcap): its names and configuration
read in C as omatic.pfq.config reads them in Python, the rewrite of Debian's source, and
(system tier) the library `pfq-omatic pcap` builds from Debian's source package."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from omatic.errors import UserError
from omatic.lab.groupcheck import CheckFailed, ipv4
from omatic.lab.pcapcheck import flow_key, netflow_v5
from omatic.pcap import rewrite
from omatic.pcap.build import PcapBuild, arch_matches, build_depends, host_suite
from omatic.pcap.run import NotBuiltError, find_build, prepare
from omatic.pfq.config import apply_env, parse_config
from omatic.pfq.uapi import STEER_MODES

unit = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
LIBPCAP = ROOT / "libpcap"
UAPI_DIR = ROOT / "kmod" / "include"


@pytest.fixture(scope="module")
def settings_prog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/pcap/settings.c with libpcap/pfq-config.c, warnings as errors."""
    prog = tmp_path_factory.mktemp("pcap") / "settings"
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wformat=2", "-Werror",
                    f"-I{LIBPCAP}", f"-I{UAPI_DIR}", "-o", str(prog),
                    str(ROOT / "tests" / "pcap" / "settings.c"), str(LIBPCAP / "pfq-config.c")],
                   check=True)
    return prog


def c_settings(prog: Path, name: str, env: dict[str, str]) -> tuple[str, tuple[int, ...] | str]:
    run = subprocess.run([str(prog), name], env=env, capture_output=True, text=True,
                         check=False)
    line = run.stdout.strip()
    if run.returncode == 0:
        fields = dict(word.split("=") for word in line.split())
        return "ok", (int(fields["group"]), int(fields["steer"]), int(fields["caplen"]))
    if run.returncode == 1:
        return "error", line.removeprefix("error: ")
    return "other", line


def python_settings(name: str, env: dict[str, str]) -> tuple[str, tuple[int, ...] | str]:
    """What pfq-omatic capture would take for the same name and environment."""
    config_path, _, devices = name[4:].partition(":") if name.startswith("pfq/") \
        else ("", "", name[4:])
    path = config_path or env.get("PCAP_CONFIG", "")
    try:
        config = apply_env(parse_config(Path(path).read_text(), path), env)
        group = config.group_of(devices.split("^"))
    except UserError as err:
        return "error", str(err)
    steer = config.steer_of(group) if group is not None else config.fanout.get(None)
    return "ok", (-1 if group is None else group, STEER_MODES[steer] if steer else -1,
                  config.caplen or 0)


CONFIGS = {
    "full": "# comment\ndef_group = 11\ncaplen = 128  # bytes\nfanout = hash\nfanout@3 = rr\n"
            "fanout @ 4 = lb\ngroup_eth0 = 3\ngroup_eth1.100 = 4\nGROUP_eth2 = 0x3\n",
    "empty": "\n   \n# nothing\n",
    "aliases": "fanout = SYM\nfanout@1 = qm\nfanout@2 = random\ndef_group = 2\n",
    "bad key": "def_group = 1\nsnaplen = 64\n",
    "bad group": "fanout@64 = hash\n",
    "octal": "def_group = 010\n",
    "caplen low": "caplen = 63\n",
    "no value": "fanout =\n",
    "no group name": "caplen@ = 64\n",
    "two words": "group_ eth0 = 1\n",
    "pfq-lang": "> steer_flow\n",
    "bad device": "group_a/b = 1\n",
    "group not fanout": "caplen@2 = 64\n",
    "unknown mode": "fanout = rollover\n",
}

CASES = [
    ("full", "pfq:eth0", {}),
    ("full", "pfq:eth2", {}),
    ("full", "pfq:eth9", {}),
    ("full", "pfq:eth1.100", {}),
    ("full", "pfq:eth0^eth9", {}),
    ("full", "pfq:eth0^eth1.100", {}),
    ("full", "pfq:eth9", {"PCAP_GROUP": "4"}),
    ("full", "pfq:eth0", {"PCAP_GROUP": "4"}),
    ("full", "pfq:eth0", {"PCAP_GROUP_eth0": "4", "PCAP_FANOUT": "copy"}),
    ("full", "pfq:eth0", {"PCAP_CAPLEN": "1500"}),
    ("full", "pfq:eth0", {"PCAP_CAPLEN": "70000"}),
    ("full", "pfq:eth0", {"PCAP_FANOUT": "steer_flow"}),
    ("full", "pfq:eth0", {"PCAP_GROUP_eth0": "x"}),
    ("full", "pfq:eth0", {"PCAP_GROUP_a/b": "1"}),
    ("empty", "pfq:eth0", {}),
    ("empty", "pfq:eth0", {"PCAP_FANOUT": "hash"}),
    ("empty", "pfq:eth0", {"PCAP_GROUP": "5", "PCAP_FANOUT": "hash"}),
    ("empty", "pfq:eth0", {"PCAP_GROUP": "0x0a"}),
    ("empty", "pfq:eth0", {"PCAP_GROUP": " 7 "}),
    ("empty", "pfq:eth0", {"PCAP_GROUP": "64"}),
    ("empty", "pfq:eth0", {"PCAP_GROUP": "-1"}),
    ("empty", "pfq:eth0", {"PCAP_GROUP": "1_0"}),
    ("aliases", "pfq:eth0", {}),
    ("aliases", "pfq:eth0", {"PCAP_GROUP": "1"}),
    ("aliases", "pfq:eth0", {"PCAP_GROUP": "0"}),
    *((name, "pfq:eth0", {}) for name in CONFIGS if name not in ("full", "empty", "aliases")),
]


@unit
@pytest.mark.parametrize(("config", "name", "env"), CASES)
def test_c_reads_settings_as_python_does(settings_prog: Path, tmp_path: Path, config: str,
                                         name: str, env: dict[str, str]) -> None:
    """The library and `pfq-omatic capture` must agree on every group, fan-out and
    caplen, and on what is an error (and where)."""
    path = tmp_path / "pcap.conf"
    path.write_text(CONFIGS[config])
    for named in (name.replace("pfq:", f"pfq/{path}:", 1), name):
        full_env = {**env} if named.startswith("pfq/") else {**env, "PCAP_CONFIG": str(path)}
        c, py = c_settings(settings_prog, named, full_env), python_settings(named, full_env)
        if py[0] == "error":
            assert c[0] == "error", (named, full_env, c, py)
            # The same place: file:line or the variable.
            assert str(c[1]).split(": ")[0] == str(py[1]).split(": ")[0], (c, py)
        else:
            assert c == py, (named, full_env)


@unit
@pytest.mark.parametrize(("name", "result"), [
    ("eth0", "other"), ("pfqeth0", "other"), ("any", "other"), ("nflog", "other"),
    ("pfq:", "error"), ("pfq:eth0^", "error"), ("pfq:^eth0", "error"),
    ("pfq:a b", "error"), ("pfq:abcdefghijklmnop", "error"), ("pfq/:eth0", "error"),
    ("pfq/pcap.conf", "error"), ("pfq:" + "^".join(f"e{i}" for i in range(9)), "error"),
    ("pfq:" + "^".join(f"e{i}" for i in range(8)), "ok"), ("pfq:eth0.100", "ok"),
])
def test_source_names(settings_prog: Path, tmp_path: Path, name: str, result: str) -> None:
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    outcome, detail = c_settings(settings_prog, name, {"PCAP_CONFIG": str(empty)})
    assert outcome == result, detail
    if result == "error":
        assert str(detail).startswith(name + ": "), detail


@unit
def test_a_named_configuration_must_exist(settings_prog: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    outcome, detail = c_settings(settings_prog, f"pfq/{missing}:eth0", {})
    assert outcome == "error" and str(detail).startswith(f"{missing}: cannot read"), detail
    outcome, detail = c_settings(settings_prog, "pfq:eth0", {"PCAP_CONFIG": str(missing)})
    assert outcome == "error", detail


# --- the rewrite of Debian's source -------------------------------------------------------

#: The lines the rewrite looks for, as Debian's libpcap 1.10 has them (facts, not its code).
TREE = {
    "pcap-int.h": '/* x */\n#define PCAP_VERSION_STRING "libpcap version " PACKAGE_VERSION\n',
    "pcap.c": '#include "config.h"\n#include "pcap-int.h"\n\nstatic struct x {\n} '
              'capture_source_types[] = {\n#ifdef A\n\t{ a_findalldevs, a_create },\n#endif\n'
              '\t{ NULL, NULL }\n};\nstatic int y[] = {\n\t{ NULL, NULL }\n};\n',
    "Makefile.in": "MODULE_C_SRC =\t\t@MODULE_C_SRC@\nPUBHDR = \\\n\tpcap/bpf.h \\\n"
                   "\tpcap/pcap.h \\\n\tpcap/sll.h\n",
    "libpcap-symbols.lds": "{\n  global:\n    bpf_dump;\n  local:\n    *;\n};\n",
    "debian/changelog": "libpcap (1.10.3-1) unstable; urgency=medium\n\n  * New.\n\n"
                        " -- A <a@example.org>  Sat, 14 Jan 2023 18:43:54 +0100\n",
    "debian/libpcap0.8.symbols": "libpcap.so.0.8 libpcap0.8 #MINVER#\n bpf_dump@Base 0.9.8\n",
}


def _tree(tmp_path: Path) -> Path:
    for name, text in TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@unit
def test_rewrite_adds_the_module_row_build_and_exports(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert rewrite.add_pfq(tree, "bookworm") == "1.10.3-1+pfq1"
    for name in rewrite.MODULE_FILES:
        assert (tree / name).read_bytes() == (LIBPCAP / name).read_bytes()
    assert (tree / "pfq" / "uapi.h").read_bytes() == rewrite.UAPI.read_bytes()
    assert 'PACKAGE_VERSION "+pfq"' in (tree / "pcap-int.h").read_text()
    pcap_c = (tree / "pcap.c").read_text()
    assert '#include "pcap-int.h"\n#include "pcap-pfq.h"\n' in pcap_c
    # In the table, before its end, and only there.
    assert "#endif\n\t{ pfq_findalldevs, pfq_create },\n\t{ NULL, NULL }\n};\nstatic" in pcap_c
    assert pcap_c.count("pfq_create") == 1
    make = (tree / "Makefile.in").read_text()
    assert "@MODULE_C_SRC@ pcap-pfq.c pfq-config.c\n" in make
    assert "\tpcap/pcap.h \\\n\tpcap/pfq.h \\\n" in make
    assert "  global:\n    pcap_fanout;\n" in (tree / "libpcap-symbols.lds").read_text()
    assert (tree / "debian/changelog").read_text().startswith(
        "libpcap (1.10.3-1+pfq1) bookworm; urgency=medium\n")
    assert " pcap_fanout@Base 1.10.3-1+pfq1\n" in (tree / "debian/libpcap0.8.symbols").read_text()


@unit
@pytest.mark.parametrize("damaged", ["pcap-int.h", "pcap.c", "Makefile.in",
                                     "libpcap-symbols.lds"])
def test_rewrite_refuses_a_source_it_does_not_know(tmp_path: Path, damaged: str) -> None:
    tree = _tree(tmp_path)
    (tree / damaged).write_text("/* another libpcap */\n")
    with pytest.raises(rewrite.RewriteError, match=f"^{damaged}: no single line for "):
        rewrite.add_pfq(tree, "bookworm")


@unit
def test_build_depends_of_a_dsc() -> None:
    dsc = ("Format: 3.0 (quilt)\nSource: libpcap\nBuild-Depends: bison, debhelper-compat (= 13),"
           " flex,\n libbluetooth-dev [linux-any], libdbus-1-dev, linux-libc-dev [i386],\n"
           " libfoo-dev [!hurd-any] <!nocheck>, libbar <pkg.libpcap.bar>, aa | bb\n"
           "Build-Depends-Indep: doxygen\nPackage-List:\n libpcap0.8 deb libs optional\n")
    assert build_depends(dsc) == ["aa", "bison", "debhelper", "doxygen", "flex",
                                  "libbluetooth-dev", "libdbus-1-dev", "libfoo-dev"]
    assert arch_matches(["linux-any"], "amd64") and not arch_matches(["i386"], "amd64")
    assert not arch_matches(["!amd64"], "amd64") and arch_matches(["!i386"], "amd64")


# --- the library, built from Debian's source (system tier) ------------------------------

@pytest.fixture(scope="module")
def built() -> Path:
    """The library the hook lab's guests use (built once, kept in the cache; a build of
    other inputs is redone): what `pfq-omatic pcap` makes for bookworm."""
    from omatic.kernels.system import find_suite
    from omatic.pcap.build import build_pcap, lab_prefix

    return build_pcap(find_suite("bookworm"), lab_prefix("bookworm"),
                      jobs=os.cpu_count() or 1).prefix


@pytest.mark.system
def test_the_package_installs_beside_the_systems_libpcap(built: Path, tmp_path: Path) -> None:
    """`pfq-omatic pcap --deb`: lintian finds no error and no warning; in a pristine
    system with Debian's tcpdump it installs without touching libpcap0.8, tcpdump loads
    it through LD_LIBRARY_PATH only, and it goes whole on removal."""
    from omatic.kernels.system import Bind, SystemSpec, ensure_system, run_in_system
    from omatic.pcap.build import PACKAGE_PREFIX, installed
    from omatic.pcap.deb import build_deb

    build = installed(built)
    assert build is not None
    deb = build_deb(build, tmp_path / "pkg")
    assert not [tag for tag in deb.lintian if tag.startswith(("E:", "W:"))]
    assert deb.path.name == f"libpcap0.8-pfq_{build.version}_amd64.deb"
    fields = subprocess.run(["dpkg-deb", "-f", str(deb.path), "Depends", "Source"],
                            capture_output=True, text=True, check=True).stdout
    assert "Depends: libc6 (>= " in fields and "Source: libpcap" in fields

    out = tmp_path / "out"
    out.mkdir()
    lib = PACKAGE_PREFIX / "lib"
    script = "\n".join([
        "exec > /out/log 2>&1", "set -ex",
        "tcpdump --version > /out/system-version",
        f"dpkg -i /pkg/{deb.path.name}",
        f"LD_LIBRARY_PATH={lib} tcpdump --version > /out/pfq-version",
        "tcpdump --version > /out/still-system-version",
        "dpkg -S /usr/lib/x86_64-linux-gnu/libpcap.so.0.8 > /out/owner",
        f"cat {PACKAGE_PREFIX}/build.json > /out/build.json",
        f"test -f {PACKAGE_PREFIX}/include/pcap/pfq.h",
        "dpkg -r libpcap0.8-pfq",
        "test ! -e /usr/lib/x86_64-linux-gnu/pfq-omatic",
        "echo done > /out/done"])
    tarball, _ = ensure_system(SystemSpec.of("bookworm", ["tcpdump"]))
    code = run_in_system(tarball, "bookworm", ["sh", "-c", script],
                         binds=[Bind(deb.path.parent, "/pkg"), Bind(out, "/out")])
    log = (out / "log").read_text(errors="replace")[-3000:] if (out / "log").is_file() else ""
    assert code == 0 and (out / "done").is_file(), log
    assert "+pfq" not in (out / "system-version").read_text()
    assert "libpcap version 1.10.3+pfq" in (out / "pfq-version").read_text()
    assert "+pfq" not in (out / "still-system-version").read_text()
    assert (out / "owner").read_text().startswith("libpcap0.8:")
    assert json.loads((out / "build.json").read_text())["prefix"] == str(PACKAGE_PREFIX)


def _tcpdump(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    tcpdump = shutil.which("tcpdump", path="/usr/bin:/usr/sbin:/sbin")
    assert tcpdump, "tcpdump is not installed (make setup)"
    return subprocess.run([tcpdump, *args], env={**os.environ,
                                                 "LD_LIBRARY_PATH": str(prefix / "lib")},
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.system
def test_built_library_is_debians_plus_pfq(built: Path) -> None:
    version = _tcpdump(built, "--version")
    assert "libpcap version 1.10.3+pfq (with TPACKET_V3)" in version.stdout
    assert (built / "lib" / "libpcap.so.0.8").resolve().name == "libpcap.so.1.10.3"
    # Debian's SONAME, and pcap_fanout exported with the rest.
    dynamic = subprocess.run(["objdump", "-p", str(built / "lib" / "libpcap.so.0.8")],
                             capture_output=True, text=True, check=True).stdout
    assert "SONAME               libpcap.so.0.8" in dynamic
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(built / "lib" /
                                                                "libpcap.so.0.8")],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "pcap_fanout" in symbols and "pfq_create" not in symbols


@pytest.mark.system
def test_built_library_without_pfq_ko(built: Path) -> None:
    """This machine has no pfq.ko loaded: the device list is the usual one, and a pfq:
    name gets one clear error."""
    listed = _tcpdump(built, "-D")
    assert listed.returncode == 0 and "lo" in listed.stdout and "pfq:" not in listed.stdout
    opened = _tcpdump(built, "-i", "pfq:lo", "-c", "1")
    assert opened.returncode == 1
    assert opened.stderr.strip().splitlines()[-1] == \
        "tcpdump: pfq:lo: /dev/pfq is missing: is pfq.ko loaded?"
    bad = _tcpdump(built, "-i", "pfq:lo^", "-c", "1")
    assert bad.returncode == 1 and "'' is not a network device name" in bad.stderr


@pytest.mark.system
def test_pcap_fanout_is_declared_and_refuses_other_captures(built: Path,
                                                            tmp_path: Path) -> None:
    program = tmp_path / "fanout.c"
    program.write_text(
        "#include <stdio.h>\n#include <pcap/pfq.h>\n"
        "int main(void)\n{\n\tpcap_t *p = pcap_open_dead(DLT_EN10MB, 65535);\n"
        "\tint ret = pcap_fanout(p, 1, \"hash\");\n"
        "\tprintf(\"%d %s\\n\", ret, pcap_geterr(p));\n\tpcap_close(p);\n\treturn 0;\n}\n")
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{built / 'include'}", "-o",
                    str(tmp_path / "fanout"), str(program), f"-L{built / 'lib'}", "-lpcap"],
                   check=True)
    run = subprocess.run([str(tmp_path / "fanout")], capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(built / "lib")}, check=True)
    assert run.stdout.startswith("-1 pcap_fanout: ") and "not a PFQ device" in run.stdout


@pytest.mark.system
def test_bench_reader_reads_through_the_library(built: Path, tmp_path: Path) -> None:
    """bench/pcap.py's reader, linked against the library, reads the host's loopback
    (libpcap's AF_PACKET) and counts what it was sent."""
    spec = importlib.util.spec_from_file_location("bench_pcap", ROOT / "bench" / "pcap.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reader = bench.build_reader(tmp_path, built)
    proc = subprocess.Popen([str(reader), "pcap", "lo", "2", "128", str(8 << 20), "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LD_LIBRARY_PATH": str(built / "lib")})
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(50):
            sock.sendto(b"x" * i, ("127.0.0.1", 9))
    time.sleep(0.5)
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    fields = dict(item.split("=") for item in out.split())
    # Two readers with no fan-out: each got or dropped every datagram (lo's MTU makes
    # TPACKET_V3's blocks large, so few), and maybe other loopback traffic of this machine.
    delivered, dropped = int(fields["delivered"]), int(fields["dropped"])
    assert proc.returncode == 0 and delivered > 0 and delivered + dropped >= 100, (out, err)
    assert int(fields["last_ns"]) > 0
    # They waited for the datagrams, asleep in poll() between them.
    assert int(fields["sleeps"]) > 0


# --- a flow monitor's export ---------------------------------------------------------------

@unit
def test_netflow_v5_records_and_flow_keys() -> None:
    frame = ipv4(10, 200, 17, 1024, 80, 1)
    key = flow_key(frame)
    assert key[2:] == (17, 1024, 80) and key[0] != key[1]
    record = struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", key[0], key[1], bytes(4), 0, 0, 4, 400,
                         1, 2, 1024, 80, 0, 0, 17, 0, 0, 0, 0, 0, 0)
    header = struct.pack("!HHIIIIBBH", 5, 2, 0, 0, 0, 0, 0, 0, 0)
    assert netflow_v5(header + record * 2) == [(key, 4), (key, 4)]
    with pytest.raises(CheckFailed, match="NetFlow version 9"):
        netflow_v5(struct.pack("!HH", 9, 0) + bytes(20))
    with pytest.raises(CheckFailed, match="2 records in 72 bytes"):
        netflow_v5(header + record)


# --- pfq-omatic run ------------------------------------------------------------------------

def _fake_build(prefix: Path) -> PcapBuild:
    """A prefix laid out as `pfq-omatic pcap` leaves it, holding the system's libpcap."""
    lib = prefix / "lib"
    lib.mkdir(parents=True)
    shutil.copy2("/usr/lib/x86_64-linux-gnu/libpcap.so.0.8", lib / "libpcap.so.0.8")
    build = PcapBuild(prefix=prefix, suite="bookworm", version="1.10.3-1+pfq1",
                      lib_version="libpcap version 1.10.3+pfq", digest="0")
    (prefix / "build.json").write_text(json.dumps(build.to_json()))
    return build


@unit
def test_run_puts_the_library_first(tmp_path: Path) -> None:
    build = _fake_build(tmp_path / "prefix")
    assert find_build(tmp_path / "prefix") == build
    app, env = prepare(build, ["tcpdump", "-i", "pfq:eth0"], {"LD_LIBRARY_PATH": "/x"})
    assert app.name == "tcpdump"
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path / 'prefix' / 'lib'}:/x"


@unit
def test_run_without_a_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotBuiltError, match=r"build it first with `pfq-omatic pcap` --prefix"):
        find_build(tmp_path / "none")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with pytest.raises(NotBuiltError, match=r"or install libpcap0.8-pfq"):
        find_build(None, package_prefix=tmp_path / "package")


@unit
def test_run_takes_the_package_when_the_user_built_none(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    package = _fake_build(tmp_path / "package")
    assert find_build(None, package_prefix=tmp_path / "package") == package
    own = _fake_build(tmp_path / "data" / "pfq-omatic" / "libpcap" / host_suite())
    assert find_build(None, package_prefix=tmp_path / "package") == own


@unit
@pytest.mark.parametrize("how", ["setuid", "setgid", "capabilities"])
def test_run_refuses_what_the_loader_would_not_give_it(tmp_path: Path, how: str) -> None:
    build = _fake_build(tmp_path / "prefix")
    app = tmp_path / "tcpdump"
    shutil.copy2(shutil.which("tcpdump", path="/usr/bin:/usr/sbin") or "", app)
    if how == "capabilities":
        # vfs_cap_data revision 2: cap_net_raw permitted.
        os.setxattr(app, "security.capability", struct.pack("<IIIII", 0x02000000, 1 << 13,
                                                             0, 0, 0))
    else:
        app.chmod(app.stat().st_mode | (stat.S_ISUID if how == "setuid" else stat.S_ISGID))
    with pytest.raises(UserError, match="ignores LD_LIBRARY_PATH"):
        prepare(build, [str(app)], {})


@unit
def test_run_checks_the_dumpcap_tshark_runs(tmp_path: Path) -> None:
    """tshark captures through the dumpcap beside it: one with capabilities (Debian's
    answer to letting non-superusers capture) would capture through the system's copy."""
    build = _fake_build(tmp_path / "prefix")
    tcpdump = shutil.which("tcpdump", path="/usr/bin:/usr/sbin") or ""
    for name in ("tshark", "dumpcap"):
        shutil.copy2(tcpdump, tmp_path / name)
    assert prepare(build, [str(tmp_path / "tshark")], {})[0] == tmp_path / "tshark"
    os.setxattr(tmp_path / "dumpcap", "security.capability",
                struct.pack("<IIIII", 0x02000000, 1 << 13, 0, 0, 0))
    with pytest.raises(UserError, match=r"dumpcap \(which tshark runs to capture\): it has "
                                        r"file capabilities"):
        prepare(build, [str(tmp_path / "tshark")], {})


@unit
def test_run_refuses_a_program_without_libpcap(tmp_path: Path) -> None:
    build = _fake_build(tmp_path / "prefix")
    with pytest.raises(UserError, match=r"it does not load libpcap\.so\.0\.8"):
        prepare(build, ["true"], {})
    with pytest.raises(UserError, match="no such program"):
        prepare(build, ["no-such-program-here"], {})
    with pytest.raises(UserError, match="no application given"):
        prepare(build, [], {})
