"""pfq-omatic build: real drivers for real kernels, and every way a build can go wrong."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import KERNEL_SERIES

import omatic.build.pipeline
import omatic.kernels.archive
from omatic.build.pipeline import BuildRequest, NotConfiguredError, OutputError, build_driver
from omatic.build.source import TarballCache, UnknownDriverError
from omatic.cache import file_lock, made_dirs
from omatic.cli import main
from omatic.errors import FAILURE_ENV, BuildError
from omatic.kernels.archive import ArchiveKernel
from omatic.kernels.find import NoHeadersError, find_kernel
from omatic.kernels.kernel import Kernel
from omatic.matrix.run import _classify
from omatic.verify.modfile import KernelModule

kbuild = pytest.mark.kbuild
unit = pytest.mark.unit


@pytest.fixture(scope="session")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("out")


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".build-*"))


@kbuild
@pytest.mark.parametrize("driver", ["e1000e", "ixgbe"])
def test_build_verifies_and_rebuilds_nothing_when_unchanged(kernel: Kernel, driver: str,
                                                            out_root: Path) -> None:
    result = build_driver(BuildRequest(driver=driver, kernel=kernel, out_root=out_root, jobs=2))
    out = out_root / kernel.release / driver
    assert result.ok and not result.up_to_date and result.out_dir == out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["build.log", "omatic.patch", "report.json", f"{driver}.ko"])
    report = json.loads((out / "report.json").read_text())
    rewritten = [s for s in report["rewrite"]["sites"] if s["action"] == "rewrite"]
    assert rewritten and report["verify"]["ok"]
    # The report names the module where it is, not the temporary folder it was built in.
    assert [m["path"] for m in report["verify"]["modules"]] == [str(out / f"{driver}.ko")]
    module = KernelModule(out / f"{driver}.ko")
    needed = module.undefined()
    for site in rewritten:
        assert site["hook"] in needed
        assert site["callee"] not in needed
    assert module.modinfo()["depends"][0].split(",").count("pfq") == 1
    assert b"+#include <pfq/hooks.h>" in (out / "omatic.patch").read_bytes()

    start = time.monotonic()
    again = build_driver(BuildRequest(driver=driver, kernel=kernel, out_root=out_root, jobs=2))
    assert again.up_to_date and again.ok
    assert time.monotonic() - start < 1.0
    assert leftovers(out_root) == []


BROKEN = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/netdevice.h>

static int fixbad_rx(struct sk_buff *skb)
{
	return netif_rx(skb) + undeclared_thing;
}
MODULE_LICENSE("GPL");
"""


@pytest.fixture
def broken_tree(tmp_path: Path) -> Path:
    root = tmp_path / "linux"
    (root / "drivers/net/fixbad").mkdir(parents=True)
    (root / "drivers/net/fixbad/Makefile").write_text("obj-$(CONFIG_FIXBAD) += fixbad.o\n")
    (root / "drivers/net/fixbad/fixbad.c").write_text(BROKEN)
    return root


@kbuild
def test_compile_error_shows_the_original_line_and_leaves_nothing(
        kernel: Kernel, broken_tree: Path, tmp_path: Path) -> None:
    req = BuildRequest(driver="fixbad", kernel=kernel, out_root=tmp_path / "out", jobs=2,
                       kernel_tree=broken_tree)
    with pytest.raises(BuildError) as err:
        build_driver(req)
    message = str(err.value)
    assert err.value.exit_code == 2
    assert "undeclared_thing" in message
    assert "fixbad.c:8:" in message  # the rewritten file has the hook header's line
    assert "original line 7: return netif_rx(skb) + undeclared_thing;" in message
    assert not (tmp_path / "out" / kernel.release / "fixbad").exists()
    assert leftovers(tmp_path / "out") == []


@kbuild
def test_interrupt_leaves_no_partial_output(kernel: Kernel, broken_tree: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(omatic.build.pipeline, "_run_make", interrupted)
    req = BuildRequest(driver="fixbad", kernel=kernel, out_root=tmp_path / "out", jobs=2,
                       kernel_tree=broken_tree)
    with pytest.raises(KeyboardInterrupt):
        build_driver(req)
    assert not (tmp_path / "out").exists()  # no lock, no folder it made


@kbuild
def test_a_driver_left_out_of_the_kernels_config_is_refused(
        kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # As the cloud flavor leaves out igb: its config has no CONFIG_IGB, nor the I2C it needs.
    config = {k: v for k, v in kernel.config().items() if k != "CONFIG_E1000E"}
    monkeypatch.setattr(Kernel, "config", lambda self: config)
    with pytest.raises(NotConfiguredError, match=r"CONFIG_E1000E is not set in its \.config"):
        build_driver(BuildRequest(driver="e1000e", kernel=kernel, out_root=tmp_path))
    out, record = tmp_path / "out", tmp_path / "failure.json"
    monkeypatch.setenv(FAILURE_ENV, str(record))
    assert main(["build", "e1000e", "--kernel", kernel.release, "--out", str(out)]) == 1
    # In a matrix that cell is a skip with the reason, not a failure.
    assert _classify(1, record, tmp_path / "no.log") == ("skip", str(NotConfiguredError(
        kernel=kernel.release, driver="e1000e", config="CONFIG_E1000E")))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pfq-omatic: error:")]
    assert len(errors) == 1 and f"{kernel.release} does not build e1000e" in errors[0]
    assert "Traceback" not in err
    assert not out.exists()


@kbuild
def test_unknown_driver_suggests_near_names(kernel: Kernel, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownDriverError, match="did you mean e1000, e1000e"):
        build_driver(BuildRequest(driver="e1000x", kernel=kernel, out_root=tmp_path))
    out = tmp_path / "out"
    assert main(["build", "e1000x", "--kernel", kernel.release, "--out", str(out)]) == 1
    assert "did you mean" in capsys.readouterr().err
    assert not out.exists()  # neither a lock file nor an empty folder
    assert main(["build", "e1000e", "--kernel", kernel.release, "--out", str(out),
                 "--source", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err
    assert not out.exists()


@kbuild
def test_dry_run_prints_commands_and_runs_nothing(kernel: Kernel, tmp_path: Path) -> None:
    # The driver's folder and config symbol come from the tarball's index, which an
    # earlier build of the session leaves; made here so the test stands alone.
    assert kernel.source_tarball is not None
    TarballCache(kernel.source_tarball).index()
    out = io.StringIO()
    assert main(["build", "e1000e", "--kernel", kernel.release, "--out", str(tmp_path / "o"),
                 "--dry-run"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith(f"make -C {kernel.build_dir} M=")
    assert "KBUILD_EXTRA_SYMBOLS=" in lines[-1] and "CONFIG_E1000E=m" in lines[-1]
    assert not (tmp_path / "o").exists()


@unit
def test_a_kernel_neither_here_nor_in_the_archive_lists_the_nearest(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    offered = [ArchiveKernel(r, "bullseye-security", "bullseye")
               for r in ("5.10.0-46-amd64", "5.10.0-46-rt-amd64")]
    monkeypatch.setattr(omatic.kernels.archive, "available_kernels", lambda: offered)
    assert main(["build", "e1000e", "--kernel", "5.10.0-99-amd64"]) == 1
    err = capsys.readouterr().err
    assert "no kernel '5.10.0-99-amd64' in Debian's archive; nearest: 5.10.0-46-amd64" in err
    assert len(err.splitlines()) == 1


@unit
def test_without_the_archive_a_missing_kernel_names_its_headers() -> None:
    with pytest.raises(NoHeadersError, match=r"install the Debian package "
                       r"linux-headers-5\.10\.0-99-amd64"):
        find_kernel("5.10.0-99-amd64", archive=False)


@unit
def test_output_that_cannot_be_written_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    req = BuildRequest(driver="e1000e", kernel=Kernel("0.0.0-test", tmp_path),
                       out_root=tmp_path / "file")
    with pytest.raises(OutputError) as err:
        build_driver(req)
    assert err.value.exit_code == 1


@unit
def test_a_second_build_of_the_same_target_waits(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    lock = tmp_path / ".e1000e.lock"
    order = []
    with file_lock(lock):
        def second() -> None:
            with file_lock(lock, "waiting for another build of e1000e"):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]
    assert "waiting for another build of e1000e" in capsys.readouterr().out
    assert not lock.exists()  # the last holder removed it


@unit
def test_made_dirs_removes_only_the_empty_folders_it_made(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with made_dirs(tmp_path / "a" / "b" / "c"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and not any((tmp_path / "a").iterdir())
    with made_dirs(tmp_path / "a" / "b" / "c") as folder:
        (folder.parent / "kept").write_text("output")
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["kept"]


GOOD = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/netdevice.h>

int fixgood_rx(struct sk_buff *skb);
int fixgood_rx(struct sk_buff *skb)
{
	return netif_rx(skb);
}
EXPORT_SYMBOL_GPL(fixgood_rx);
MODULE_LICENSE("GPL");
"""


@kbuild
def test_a_source_folder_that_builds_another_driver_is_refused(
        kernel: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`build igc --source DIR` where DIR builds fixgood: one line naming what DIR builds,
    exit 1, nothing written as igc."""
    src = tmp_path / "fixgood-1.0"
    src.mkdir()
    (src / "Makefile").write_text("obj-m := fixgood.o\n")
    (src / "fixgood.c").write_text(GOOD)
    out = tmp_path / "out"
    assert main(["build", "igc", "--kernel", kernel.release, "--source", str(src),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pfq-omatic: error:")]
    assert len(errors) == 1 and f"{src} builds fixgood, not igc" in errors[0], err
    assert not (out / kernel.release / "igc").exists() and not leftovers(out)


@kbuild
@pytest.mark.parametrize("origin", ["kernel_tree", "source_dir"])
def test_build_from_a_tree_or_an_out_of_tree_dir(kernel: Kernel, tmp_path: Path,
                                                 origin: str) -> None:
    if origin == "kernel_tree":
        where = tmp_path / "linux"
        driver_dir = where / "drivers/net/fixgood"
        makefile = "obj-$(CONFIG_FIXGOOD) += fixgood.o\n"
    else:
        where = driver_dir = tmp_path / "fixgood-1.0"
        makefile = "obj-m := fixgood.o\n"
    driver_dir.mkdir(parents=True)
    (driver_dir / "Makefile").write_text(makefile)
    (driver_dir / "fixgood.c").write_text(GOOD)
    req = BuildRequest(driver="fixgood", kernel=kernel, out_root=tmp_path / "out", jobs=2,
                       **{origin: where})
    result = build_driver(req)
    assert result.ok, result.report["verify"]
    assert result.report["source"]["origin"] == {"kernel_tree": "tree", "source_dir": "dir"}[origin]
    module = KernelModule(result.out_dir / "fixgood.ko")
    assert "pfq_netif_rx" in module.undefined() and "netif_rx" not in module.undefined()
    assert (driver_dir / "fixgood.c").read_text() == GOOD  # the user's tree is only read


@kbuild
def test_verify_command_passes_a_build_and_fails_a_tampered_copy(
        kernel: Kernel, out_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = build_driver(BuildRequest(driver="e1000e", kernel=kernel, out_root=out_root, jobs=2))
    ko = result.out_dir / "e1000e.ko"
    out = io.StringIO()
    assert main(["verify", str(ko), "--kernel", kernel.release, "--json"], out=out) == 0
    checks = {c["name"]: c["status"] for c in json.loads(out.getvalue())["modules"][0]["checks"]}
    assert checks["entry-points"] == "pass"  # from the report.json beside the module
    # What build says of it: where the pfq.ko it needs is, and how to load both.
    said = io.StringIO()
    assert main(["build", "e1000e", "--kernel", kernel.release, "--out", str(out_root)],
                out=said) == 0
    pfq = Path(result.report["kmod"]["dir"]) / "pfq.ko"
    assert f"  needs pfq.ko: {pfq}\n" in said.getvalue() and pfq.is_file()
    assert (f"sudo rmmod e1000e; sudo insmod {pfq}; sudo insmod {ko}\n"
            in said.getvalue()), said.getvalue()
    # Without --kernel, the module's vermagic names its kernel (the default may be another);
    # the other kernel of the tests is a mismatch said in one line naming both.
    assert main(["verify", str(ko)], out=io.StringIO()) == 0
    other = next(s for s in KERNEL_SERIES if not kernel.release.startswith(f"{s}."))
    capsys.readouterr()
    assert main(["verify", str(ko), "--kernel", other], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and kernel.release in err and f" {other}." in err, err
    # The same module with its depends entry renamed: the kernel would not load pfq first.
    data = ko.read_bytes()
    assert data.count(b"depends=pfq\0") == 1
    tampered = tmp_path / "e1000e.ko"
    tampered.write_bytes(data.replace(b"depends=pfq\0", b"depends=pfx\0"))
    out = io.StringIO()
    assert main(["verify", str(tampered), "--kernel", kernel.release,
                 "--pfq-symvers", result.report["kmod"]["symvers"]], out=out) == 2
    assert "e1000e.ko: depends: fail" in out.getvalue()
    assert main(["verify", str(tmp_path / "missing.ko")]) == 1
    assert "no such module file" in capsys.readouterr().err


@kbuild
@pytest.mark.parametrize("driver", ["atlantic", "tulip", "liquidio"])
def test_drivers_once_refused_build_and_verify(driver: str, out_root: Path) -> None:
    # On 6.1, where each failed (`make matrix` builds them on every kernel).
    # atlantic: a header of a subfolder includes one of the module's folder, found only
    # through the Makefile's -I$(srctree)/$(src).
    # tulip: its netif_rx site is under the #else of CONFIG_TULIP_NAPI, which Debian sets.
    # liquidio: its Makefile names objects through a variable, $(common-objs).
    kernel = find_kernel("6.1")
    result = build_driver(BuildRequest(driver=driver, kernel=kernel, out_root=out_root, jobs=2))
    assert result.ok, result.report["verify"]
    hooks = next(c for c in result.report["verify"]["modules"][0]["checks"]
                 if c["name"] == "hooks")
    if driver == "tulip":
        assert hooks["status"] == "pass"
        assert ("pfq_netif_rx: rewritten, in code this kernel's config compiles out"
                in hooks["details"])
        assert "pfq_netif_receive_skb" in KernelModule(result.modules[0]).undefined()
    elif driver == "atlantic":
        assert "pfq_gro_receive" in KernelModule(result.modules[0]).undefined()
    else:
        assert "pfq_netif_rx" in KernelModule(result.modules[0]).undefined()


@kbuild
def test_drivers_lists_what_the_kernel_builds_and_calls_an_entry_point(
        kernel: Kernel) -> None:
    out = io.StringIO()
    assert main(["drivers", "--kernel", kernel.release, "--json"], out=out) == 0
    listed = {d["name"]: d for d in json.loads(out.getvalue())["drivers"]}
    assert len(listed) >= 100
    config = kernel.config()
    for name in ("e1000e", "8390", "usbnet", "virtio_net", "vmxnet3", "hv_netvsc",
                 "xen-netfront", "r8169", "mlx5_core"):
        assert name in listed, name
    # thunderbolt-net was renamed thunderbolt_net in 6.3.
    assert {"thunderbolt-net", "thunderbolt_net"} & set(listed)
    for driver in listed.values():
        assert driver["entry_points"] and config[driver["config"]] in ("m", "y")
    # ne2k-pci receives through 8390 and calls no entry point itself; a PTP clock is no NIC.
    assert "ne2k-pci" not in listed and "ptp_kvm" not in listed
    assert listed["e1000e"]["nic_model"] == "e1000e" and listed["8390"]["nic_model"] == ""


@kbuild
def test_vanilla_builds_the_driver_as_it_is(out_root: Path) -> None:
    # What a matrix asks when an accelerated build fails: does the driver build out of tree
    # at all, the same way?
    kernel = find_kernel("6.1")
    result = build_driver(BuildRequest(driver="e100", kernel=kernel, out_root=out_root,
                                       jobs=2, vanilla=True))
    assert result.ok and result.out_dir == out_root / kernel.release / "e100.vanilla"
    assert result.report["vanilla"] and result.report["rewrite"]["sites"] == []
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["build.log", "e100.ko",
                                                                "report.json"]
    undefined = KernelModule(result.modules[0]).undefined()
    assert "netif_receive_skb" in undefined and not any(s.startswith("pfq_") for s in undefined)


@pytest.mark.kbuild
def test_dry_run_runs_nothing_and_json_is_json(tmp_path: Path) -> None:
    """`build igc --kernel 6.1 --dry-run --json` as a user runs it: JSON with the commands,
    and nothing written where it runs."""
    run = subprocess.run([sys.executable, "-m", "omatic", "build", "igc", "--kernel", "6.1",
                          "--dry-run", "--json"], cwd=tmp_path, capture_output=True,
                         text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stderr
    (plan,) = json.loads(run.stdout)["dry_run"]
    assert plan["kernel"].startswith("6.1.") and plan["system"] is None
    # The driver's own folder and config symbol show once the tarball is extracted.
    last = plan["commands"][-1]
    assert last.startswith("make -C ") and "KBUILD_EXTRA_SYMBOLS=" in last
    assert not list(tmp_path.iterdir())


@pytest.mark.unit
def test_dry_run_of_a_kernel_not_here_makes_no_system(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A kernel that would need a Debian system of its own: the dry run shows the
    mmdebstrap command and makes nothing."""
    import omatic.kernels.system

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run made a system")

    monkeypatch.setattr(omatic.kernels.archive, "available_kernels", lambda *a, **k: [
        ArchiveKernel("6.1.0-55-amd64", "bookworm", "bookworm")])
    for name in ("ensure_system", "ensure_root"):
        monkeypatch.setattr(omatic.kernels.system, name, forbidden)
    monkeypatch.chdir(tmp_path)
    for argv in (["--dry-run"], ["--dry-run", "--json"]):
        out = io.StringIO()
        assert main(["build", "igc", "--kernel", "6.1.0-55-amd64", *argv], out=out) == 0
        text = out.getvalue()
        if "--json" in argv:
            (plan,) = json.loads(text)["dry_run"]
            assert plan["system"]["suite"] == "bookworm"
            text = "\n".join(plan["commands"])
        assert text.startswith("mmdebstrap ") and "linux-headers-6.1.0-55-amd64" in text
    assert not list(tmp_path.iterdir())
