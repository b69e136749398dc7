"""DKMS packaging: the tree, its dkms.conf as bash reads it, the pre-install check and the
Debian package."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import KERNEL_SERIES

from asuser import as_user, one_line
from omatic.build.dkms import (
    MODULE_VERSION,
    TARGET_SYSTEM,
    DkmsError,
    DkmsTree,
    PackagedDriver,
    Series,
    build_deb,
    set_module_version,
    write_tree,
)
from omatic.kernels.find import find_kernel
from omatic.kernels.kernel import Kernel
from omatic.lab.driver import LabConfig, run_lab
from omatic.templates import render
from omatic.verify.dkms_check import main as check_main
from omatic.verify.dkms_check import pre_install
from omatic.verify.modfile import KernelModule
from omatic.verify.signature import Certificate, read_signature

unit = pytest.mark.unit
kbuild = pytest.mark.kbuild


# -- MODULE_VERSION ----------------------------------------------------------------------

@unit
def test_a_version_is_added_after_the_license(tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("int x;\n")
    (tmp_path / "main.c").write_text('MODULE_AUTHOR("x");\nMODULE_LICENSE("GPL v2");\n'
                                     'MODULE_DESCRIPTION("d");\n')
    assert set_module_version(tmp_path, "9.9-pfq") == "main.c"
    assert (tmp_path / "main.c").read_text() == (
        'MODULE_AUTHOR("x");\nMODULE_LICENSE("GPL v2");\nMODULE_VERSION("9.9-pfq");\n'
        'MODULE_DESCRIPTION("d");\n')
    assert (tmp_path / "a.c").read_text() == "int x;\n"


@unit
def test_a_driver_s_own_version_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "main.c").write_text('MODULE_LICENSE("GPL");\nMODULE_VERSION(DRV_VERSION);\n')
    set_module_version(tmp_path, "9.9-pfq")
    assert (tmp_path / "main.c").read_text() == ('MODULE_LICENSE("GPL");\n'
                                                 'MODULE_VERSION("9.9-pfq");\n')


@unit
def test_a_driver_without_license_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "main.c").write_text("int x;\n")
    with pytest.raises(DkmsError, match="no MODULE_LICENSE"):
        set_module_version(tmp_path, "9.9-pfq")


# -- dkms.conf as DKMS reads it ----------------------------------------------------------

def _fake_tree() -> DkmsTree:
    def series(name: str, release: str) -> Series:
        kernel = Kernel(release=release, build_dir=Path("/nonexistent"))
        drivers = [PackagedDriver("e1000e", "drivers/net/ethernet/intel/e1000e", "CONFIG_E1000E",
                                  1, 1, "x.c"),
                   PackagedDriver("virtio_net", "drivers/net", "CONFIG_VIRTIO_NET", 1, 1, "x.c")]
        return Series(name=name, kernel=kernel, kernels=[release], drivers=drivers)

    return DkmsTree(path=Path("/x"), version="0.1.0", drivers=["e1000e", "virtio_net"],
                    series=[series("6.1", "6.1.0-56-amd64"),
                            series("6.12", "6.12.117+deb12-amd64")])


def _fake_conf(folder: Path) -> Path:
    conf = folder / "dkms.conf"
    conf.write_text(render("dkms.conf.j2", tree=_fake_tree(), package="pfq-omatic",
                           module_version=MODULE_VERSION, command="", date="today"))
    return conf


def _source(conf: Path, kernelver: str, *dkms_args: str) -> tuple[dict[str, str], str]:
    """Source dkms.conf as dkms 3.0.10 does (bash, with its variables set, in a process
    whose command line is `dkms_args`); the variables DKMS reads, and what it printed on
    stderr."""
    script = (f"kernelver={kernelver!r}; arch=x86_64; dkms_tree=/var/lib/dkms; "
              f"kernel_source_dir=/lib/modules/{kernelver}/build; . {conf}; "
              "excluded=no; [[ $BUILD_EXCLUSIVE_KERNEL && ! $kernelver =~ "
              "$BUILD_EXCLUSIVE_KERNEL ]] && excluded=yes; "
              'echo "excluded=$excluded"; echo "MAKE=${MAKE[0]}"; '
              'echo "PRE_INSTALL=$PRE_INSTALL"; echo "POST_BUILD=$POST_BUILD"; '
              'echo "AUTOINSTALL=$AUTOINSTALL"; '
              'for i in "${!BUILT_MODULE_NAME[@]}"; do '
              'echo "module$i=${BUILT_MODULE_NAME[$i]}:${BUILT_MODULE_LOCATION[$i]}:'
              '${DEST_MODULE_LOCATION[$i]}"; done')
    run = subprocess.run(["bash", "-c", script, *dkms_args], capture_output=True, text=True,
                         check=True)
    values = dict(line.split("=", 1) for line in run.stdout.splitlines())
    return values, run.stderr


@unit
@pytest.mark.parametrize(("kernelver", "series"), [
    ("6.1.0-56-amd64", "6.1"), ("6.1.0-47-cloud-amd64", "6.1"),
    ("6.12.117+deb12-amd64", "6.12"), ("6.12.107+deb12-rt-amd64", "6.12")])
def test_dkms_conf_picks_the_series_of_kernelver(tmp_path: Path, kernelver: str,
                                                 series: str) -> None:
    values, said = _source(_fake_conf(tmp_path), kernelver, "dkms", "build", "-k", kernelver)
    assert values["excluded"] == "no" and values["AUTOINSTALL"] == "yes"
    assert said == ""
    assert values["module0"] == "pfq:pfq/:/updates/dkms"
    assert values["module1"] == (f"e1000e:series/{series}/drivers/net/ethernet/intel/e1000e/:"
                                 "/updates/dkms")
    assert values["module2"] == f"virtio_net:series/{series}/drivers/net/:/updates/dkms"
    build = "/var/lib/dkms/pfq-omatic/0.1.0/build"
    assert values["MAKE"] == (f"make -C /lib/modules/{kernelver}/build M={build} "
                              f"PFQ_TREE={build} modules")
    base = f"/var/lib/dkms/pfq-omatic/0.1.0/{kernelver}/x86_64"
    assert values["PRE_INSTALL"] == f"pfq-omatic-check pre-install {kernelver} {base}"
    assert values["POST_BUILD"] == f"pfq-omatic-check post-build {kernelver} {base}"


@unit
@pytest.mark.parametrize("kernelver", ["6.10.3-amd64", "7.2.13+deb14-amd64",
                                       "5.10.0-46-amd64", "16.1.0-1-amd64"])
def test_dkms_conf_excludes_other_series_and_names_the_command(tmp_path: Path,
                                                               kernelver: str) -> None:
    values, said = _source(_fake_conf(tmp_path), kernelver, "dkms", "build", "-k", kernelver)
    assert values["excluded"] == "yes"
    assert "module1" not in values
    assert said.strip() == (
        f"pfq-omatic: pfq-omatic 0.1.0 has sources for kernel series 6.1, 6.12, not for "
        f"{kernelver}; to add it: pfq-omatic dkms e1000e virtio_net --kernel {kernelver} --deb")


@unit
def test_dkms_conf_leaves_out_the_rt_flavor_of_6_1(tmp_path: Path) -> None:
    # Its sources carry the PREEMPT_RT patchset, which linux-source-6.1 does not.
    values, said = _source(_fake_conf(tmp_path), "6.1.0-56-rt-amd64",
                           "dkms", "build", "-k", "6.1.0-56-rt-amd64")
    assert values["excluded"] == "yes" and values["AUTOINSTALL"] == ""
    assert said.strip() == (
        "pfq-omatic: pfq-omatic 0.1.0 cannot build for 6.1.0-56-rt-amd64: Debian builds it "
        "with the PREEMPT_RT patchset, which linux-source-6.1 (the sources of this package) "
        "does not carry")


@unit
@pytest.mark.parametrize(("target", "offered"), [
    ("7.2.13+deb14-amd64", False), ("6.1.0-55-amd64", True), ("6.12.117+deb12-rt-amd64", True)])
def test_autoinstall_is_offered_for_the_series_of_the_kernel_asked_for(
        tmp_path: Path, target: str, offered: bool) -> None:
    # dkms 3.0.10's autoinstall reads dkms.conf with an installed kernel in $kernelver, and
    # fails (exit 11, and the kernel's postinst with it) on any kernel BUILD_EXCLUSIVE skips.
    values, said = _source(_fake_conf(tmp_path), "6.1.0-56-amd64",
                           "/usr/sbin/dkms", "autoinstall", "--kernelver", target)
    assert values["AUTOINSTALL"] == ("yes" if offered else "")
    assert (f"not for {target}; to add it" in said) == (not offered)


@unit
def test_dkms_conf_fields_dh_dkms_reads_are_literal(tmp_path: Path) -> None:
    """dh_dkms takes PACKAGE_NAME and PACKAGE_VERSION from the first lines naming them."""
    text = render("dkms.conf.j2", tree=_fake_tree(), package="pfq-omatic",
                  module_version=MODULE_VERSION, command="pfq-omatic dkms x", date="today")
    named = [line for line in text.splitlines() if "PACKAGE_NAME=" in line
             or "PACKAGE_VERSION=" in line]
    assert named[:2] == ['PACKAGE_NAME="pfq-omatic"', 'PACKAGE_VERSION="0.1.0"']


@unit
def test_the_check_script_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(["install", "6.1", "/x"]) == 2
    assert "usage" in capsys.readouterr().err


@unit
def test_the_check_without_post_build_says_so(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(["pre-install", "0.0.0-none", str(tmp_path)]) == 1
    assert "pre-install check for 0.0.0-none failed: no headers" in capsys.readouterr().out


# -- a real tree, built against the kernels here -----------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> DkmsTree:
    kernels = [find_kernel(series) for series in KERNEL_SERIES]
    out = tmp_path_factory.mktemp("dkms") / "pfq-omatic-0.1.0"
    return write_tree(["e1000e", "virtio_net"], kernels, out, command="test")


@kbuild
def test_the_tree_holds_each_series_with_its_patch_and_reports(tree: DkmsTree) -> None:
    assert [s.name for s in tree.series] == list(KERNEL_SERIES)
    meta = json.loads((tree.path / "pfq-omatic-dkms.json").read_text())
    assert meta["drivers"] == ["e1000e", "virtio_net"]
    for series in KERNEL_SERIES:
        root = tree.path / "series" / series
        patch = (root / "omatic.patch").read_text()
        assert "+\tpfq_gro_receive(" in patch or "+\treturn pfq_gro_receive(" in patch \
            or "pfq_gro_receive(" in patch
        assert f'+MODULE_VERSION("{MODULE_VERSION}");' in patch
        report = json.loads((root / "reports" / "e1000e.json").read_text())
        assert {s["hook"] for s in report["sites"]} == {"pfq_gro_receive"}
    assert (tree.path / "pfq-omatic-check").stat().st_mode & 0o111
    assert not list(tree.path.parent.glob(".pfq-omatic-*"))  # no work folder left


@kbuild
def test_an_existing_output_is_refused(tree: DkmsTree) -> None:
    with pytest.raises(DkmsError, match="exists"):
        write_tree(["e1000e"], [find_kernel("6.1")], tree.path)


@kbuild
def test_the_include_folders_of_a_driver_s_makefile_reach_its_dkms_build(
        tmp_path: Path) -> None:
    """atlantic's hw_atl2/hw_atl2.h includes aq_common.h of the module's own folder, which
    its Makefile adds as -I$(srctree)/$(src): out of tree, that is the headers package."""
    kernel = find_kernel("6.1")
    tree = write_tree(["atlantic"], [kernel], tmp_path / "pfq-omatic-0.1.0", command="test")
    [driver] = tree.series[0].drivers
    assert driver.include_dirs == ("drivers/net/ethernet/aquantia/atlantic",)
    run = subprocess.run(["make", "-j2", f"KDIR={kernel.build_dir}"], cwd=tree.path,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert sorted(ko.name for ko in tree.path.rglob("*.ko")) == ["atlantic.ko", "pfq.ko"]


@kbuild
@pytest.mark.parametrize("series", KERNEL_SERIES)
def test_the_tree_builds_in_one_run_and_the_check_passes_then_catches_a_bad_crc(
        tree: DkmsTree, series: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    kernel = find_kernel(series)
    build = tmp_path / "build"
    shutil.copytree(tree.path, build, symlinks=True)
    run = subprocess.run(["make", "-j2", f"KDIR={kernel.build_dir}"], cwd=build,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    kos = {ko.name: ko for ko in build.rglob("*.ko")}
    assert sorted(kos) == ["e1000e.ko", "pfq.ko", "virtio_net.ko"]
    for name in ("e1000e.ko", "virtio_net.ko"):
        assert KernelModule(kos[name]).modinfo()["version"] == [MODULE_VERSION]
    # As DKMS lays it out: BASE/module/ the files to install, BASE/log/ what post-build kept.
    base = tmp_path / "base"
    (base / "module").mkdir(parents=True)
    for ko in kos.values():
        shutil.copy2(ko, base / "module")
    with contextlib.chdir(build):
        assert check_main(["post-build", kernel.release, str(base)]) == 0
    assert pre_install(kernel.release, base, build) == 0
    assert f"verified for {kernel.release}" in capsys.readouterr().out
    symvers = base / "log" / "Module.symvers"
    lines = symvers.read_text().splitlines()
    symvers.write_text("\n".join("0x12345678" + line[10:] if "\tpfq_gro_receive\t" in line
                                 else line for line in lines) + "\n")
    assert pre_install(kernel.release, base, build) == 1
    said = capsys.readouterr().out
    assert ("e1000e.ko: hooks check failed: e1000e: disagrees about version of symbol "
            "pfq_gro_receive") in said
    assert f"not installing for {kernel.release}" in said


@kbuild
def test_the_package_builds_and_lintian_finds_no_error(tree: DkmsTree, tmp_path: Path) -> None:
    built = build_deb(tree, tmp_path)
    assert built.deb == tmp_path / "pfq-omatic-dkms_0.1.0_all.deb"
    assert not [line for line in built.lintian if line.startswith("E:")]
    listing = subprocess.run(["dpkg-deb", "-c", str(built.deb)], capture_output=True,
                             text=True, check=True).stdout
    assert "./usr/src/pfq-omatic-0.1.0/dkms.conf" in listing
    assert "-rwxr-xr-x root/root" in next(line for line in listing.splitlines()
                                          if line.endswith("/pfq-omatic-check"))
    fields = subprocess.run(["dpkg-deb", "-f", str(built.deb), "Depends"], capture_output=True,
                            text=True, check=True).stdout
    assert "python3-pyelftools" in fields and "python3-cryptography" in fields
    assert "dkms" in fields
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pfq-omatic-dkms_0.1.0_all.deb"]


# -- the lifecycle, under Debian 12's dkms, in a disposable system -----------------------

def _previous_abi(release: str) -> str:
    """The 6.1 kernel of the ABI before `release` that the archive serves: a kernel update
    to come, as the system sees it."""
    from omatic.kernels.archive import ArchiveKernel, served

    head, abi, flavor = re.fullmatch(r"(\d+\.\d+\.\d+)-(\d+)-(.+)", release).groups()
    for older in range(int(abi) - 1, int(abi) - 6, -1):
        kernel = ArchiveKernel(release=f"{head}-{older}-{flavor}",
                               archive_suite="bookworm-security", suite="bookworm")
        if served(kernel):
            return kernel.release
    pytest.fail(f"the archive serves none of the five ABIs before {release}")


@pytest.mark.system
def test_the_package_lives_through_install_new_kernels_failures_and_removal(
        tree: DkmsTree, tmp_path: Path) -> None:
    from omatic.kernels.system import Bind, SystemSpec, ensure_system, run_in_system

    built = build_deb(tree, tmp_path / "pkg")
    assert built.deb is not None
    added = _previous_abi(find_kernel("6.1").release)
    tarball, _ = ensure_system(SystemSpec.of("bookworm", TARGET_SYSTEM))
    out = tmp_path / "out"
    out.mkdir()
    script = Path(__file__).with_name("dkms-lifecycle.sh")
    code = run_in_system(tarball, "bookworm",
                         ["bash", "/t/dkms-lifecycle.sh", f"/pkg/{built.deb.name}", "e1000e",
                          added],
                         binds=[Bind(built.deb.parent, "/pkg"), Bind(script.parent, "/t"),
                                Bind(out, "/out")])
    log = "\n".join((out / name).read_text(errors="replace")[-3000:]
                    for name in ("log", "install.log") if (out / name).is_file())
    results = dict(line.split("=", 1) for line in (out / "results").read_text().splitlines())
    assert code == 0 and results.get("done") == "yes", log
    kernels = results["kernels"].split()
    assert len(kernels) == 2
    # 2. Every installed kernel, not only the newest; the files are ours, signed by DKMS.
    assert results["install_exit"] == "0", log
    install = (out / "install.log").read_text()
    for k in kernels:
        assert f"pfq-omatic: verified for {k}" in install
        for module in ("pfq", "e1000e"):
            assert f"/lib/modules/{k}/updates/dkms/{module}.ko" in results[f"file:{k}:{module}"]
            assert results[f"version:{k}:{module}"] == MODULE_VERSION
            assert results[f"signer:{k}:{module}"] == "DKMS module signing key"
    assert results["mok_pub"] == "yes"
    mok = Certificate.load(out / "mok.pub")
    installed = sorted((out / "root/lib/modules").glob("*/updates/dkms/*.ko*"))
    assert len(installed) == (len(tree.drivers) + 1) * len(kernels)
    for ko in installed:
        data = KernelModule(ko).data  # 6.12's are .ko.xz, as its in-tree modules
        signature = read_signature(data, ko)
        assert signature is not None and signature.signer == "DKMS module signing key"
        assert signature.verify(data[:signature.content_size], mok) is None
    # 3. The lab boots what DKMS installed, and every phase holds.
    for k in kernels:
        labbed = run_lab(LabConfig(driver="e1000e", kernel=find_kernel(k), nic_model="e1000e",
                                   out_root=tmp_path / "lab", installed=out / "root"))
        assert labbed.ok, labbed.report["failures"]
        assert labbed.report["modules"]["from"].endswith(f"{k}/updates/dkms")
    # 4. A new kernel of a series the package has: built and installed by the kernel's hook.
    assert results["added_exit"] == "0"
    assert "/updates/dkms/e1000e.ko" in results[f"file:{added}:e1000e"]
    # 5. Outside the series: exit 77, our message naming the command, the hook succeeds.
    outside = (out / "outside.log").read_text()
    assert results["outside_build_exit"] == "77"
    assert results["outside_hook_exit"] == "0"
    assert "to add it: pfq-omatic dkms e1000e virtio_net --kernel 9.9.0-1-amd64 --deb" in outside
    # 6a. A module that would fail to load: not installed, the check named.
    assert results["tampered_exit"] != "0"
    tampered = (out / "tampered.log").read_text()
    assert "hooks check failed" in tampered and "disagrees about version of symbol" in tampered
    assert "pre_install failed, aborting install" in tampered
    assert "/kernel/drivers/" in results[f"tampered_file:{kernels[0]}"]
    assert "/updates/dkms/" in results[f"untouched_file:{kernels[1]}"]
    # 6b. A compile failure for one kernel: that kernel keeps its in-tree driver.
    assert results["broken_exit"] != "0"
    assert "/kernel/drivers/" in results[f"broken_file:{kernels[0]}"]
    assert "/updates/dkms/" in results[f"unaffected_file:{kernels[1]}"]
    # 7. Removed: nothing of it anywhere, the in-tree driver again on every kernel.
    assert results["purge_exit"] == "0"
    assert (results["dkms_status"], results["var_lib_dkms"], results["usr_src"]) == ("0",) * 3
    for k in (*kernels, added):
        assert "/kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko" in \
            results[f"purged_file:{k}:e1000e"]


@pytest.mark.kbuild
def test_dkms_into_a_read_only_folder_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "f").write_text("mine\n")
    run = as_user(tmp_path, "dkms", "e1000e", "--kernel", "6.1", "--out", "ro",
                   read_only_dir=tmp_path / "ro")
    one_line(run, 1, "ro", "cannot write the output")
    one_line(as_user(tmp_path, "dkms", "e1000e", "--kernel", "6.1", "--out", "f"), 1,
              "f: a file is there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "ro"]


@pytest.mark.kbuild
def test_dkms_without_deb_says_what_to_do_with_the_tree(tmp_path: Path) -> None:
    run = as_user(tmp_path, "dkms", "e1000e", "--kernel", "6.1", "--out", "d")
    assert run.returncode == 0, run.stderr
    last = run.stdout.splitlines()[-1]
    (tree,) = (tmp_path / "d").iterdir()
    assert last.startswith(f"next: sudo cp -r d/{tree.name} /usr/src/ && sudo dkms add -m "
                           f"pfq-omatic -v "), last
    assert "--deb" in last
