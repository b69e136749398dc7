"""Finding and staging driver sources: Makefiles, tarballs, include closure."""

from __future__ import annotations

import io
import lzma
import os
import re
import tarfile
from pathlib import Path

import pytest

from omatic.build.source import (
    TarballCache,
    TarballError,
    UnknownDriverError,
    extract,
    index_modules,
    lookup,
    parse_makefile,
    stage,
    stage_from_dir,
    stage_from_tree,
)
from omatic.errors import PathError

pytestmark = pytest.mark.unit

SHARED = """\
# SPDX-License-Identifier: GPL-2.0
obj-$(CONFIG_FIX_NET) += fixnet.o
obj-$(CONFIG_FIX_CHAR) += fixchar.o   # a comment
obj-$(CONFIG_FIX_SUB) += sub/
ccflags-y += -DFIX
"""

COMPOSITE = """\
obj-$(CONFIG_FIXDRV) += fixdrv.o

fixdrv-objs := main.o ring.o \\
		ethtool.o
fixdrv-$(CONFIG_FIXDRV_DCB) += dcb.o
CFLAGS_trace.o := -I$(src)
"""


def test_a_makefile_shared_by_modules() -> None:
    mods = {m.name: m for m in parse_makefile(SHARED, "drivers/net")}
    assert set(mods) == {"fixnet", "fixchar"}
    assert mods["fixnet"].config == "CONFIG_FIX_NET"
    assert mods["fixnet"].objects == ("fixnet.o",)
    assert not mods["fixnet"].alone
    assert "ccflags-y += -DFIX" in mods["fixnet"].lines


def test_a_makefile_of_one_composite_module() -> None:
    (mod,) = parse_makefile(COMPOSITE, "drivers/net/fix")
    assert mod.alone and mod.config == "CONFIG_FIXDRV"
    assert mod.objects == ("main.o", "ring.o", "ethtool.o", "dcb.o")
    assert "CFLAGS_trace.o := -I$(src)" in mod.lines


def test_a_module_built_for_several_configs() -> None:
    text = ("obj-$(CONFIG_NE2K_PCI) += ne2k-pci.o 8390.o\n"
            "obj-$(CONFIG_PCMCIA_PCNET) += pcnet_cs.o 8390.o\n")
    mods = {m.name: m for m in parse_makefile(text, "drivers/net/ethernet/8390")}
    assert mods["8390"].configs == ("CONFIG_NE2K_PCI", "CONFIG_PCMCIA_PCNET")
    assert mods["8390"].enabled_by({"CONFIG_PCMCIA_PCNET": "m"}) == "CONFIG_PCMCIA_PCNET"
    assert mods["8390"].enabled_by({"CONFIG_NE2K_PCI": "n"}) is None
    assert mods["ne2k-pci"].configs == ("CONFIG_NE2K_PCI",)


def test_objects_named_through_a_variable() -> None:
    # liquidio's shape: two modules share common-objs.
    text = ("common-objs := core.o \\\n\tring.o\ncommon-objs += mbox.o\n"
            "obj-$(CONFIG_LIO) += lio.o\nlio-y := main.o $(common-objs)\n"
            "obj-$(CONFIG_LIO_VF) += lio_vf.o\nlio_vf-y := vf.o $(common-objs)\n")
    mods = {m.name: m for m in parse_makefile(text, "drivers/net/ethernet/lio")}
    assert mods["lio"].objects == ("main.o", "core.o", "ring.o", "mbox.o")
    assert mods["lio_vf"].objects == ("vf.o", "core.o", "ring.o", "mbox.o")
    # A generated Kbuild for one of them defines the variable before it is used.
    assert [" ".join(line.split()) for line in mods["lio"].lines[:3]] == [
        "common-objs := core.o ring.o", "common-objs += mbox.o",
        "lio-y := main.o $(common-objs)"]


def test_a_generated_kbuild_keeps_the_makefiles_conditionals() -> None:
    # mlx5_core's shape: objects added under ifneq; the Kbuild of one module must keep the
    # block, or it builds what the kernel's config leaves out.
    text = ("obj-$(CONFIG_A) += a.o\nobj-$(CONFIG_B) += b.o\na-y := main.o\n"
            "ifneq ($(CONFIG_A_EXTRA),)\n\ta-y += extra.o\nendif\nb-y := other.o\n")
    mods = {m.name: m for m in parse_makefile(text, "drivers/net/ethernet/ab")}
    assert not mods["a"].alone and mods["a"].objects == ("main.o", "extra.o")
    assert mods["a"].lines == ("a-y := main.o", "ifneq ($(CONFIG_A_EXTRA),)",
                               "\ta-y += extra.o", "endif", "b-y := other.o")


INCLUDES = """\
obj-$(CONFIG_FIXINC) += fixinc.o
ccflags-y += -I$(srctree)/$(src) -I $(srctree)/drivers/net/shared
ccflags-y += -I$(src)/sub -I/usr/include/elsewhere -I$(objtree)/gen -I$(srctree)/../up
fixinc-objs := main.o sub/part.o
"""


def test_include_folders_a_makefile_adds_under_srctree(tmp_path: Path) -> None:
    # atlantic's shape: sub/part.h includes "top.h" from the module's folder, found only
    # through the Makefile's -I$(srctree)/$(src); shared.h only through -I...shared.
    tree = write(tmp_path / "linux", {
        "drivers/net/fixinc/Makefile": INCLUDES,
        "drivers/net/fixinc/main.c": '#include "shared.h"\n',
        "drivers/net/fixinc/top.h": "", "drivers/net/fixinc/sub/part.h": '#include "top.h"\n',
        # mlx5_core's shape: <steering/...> is the driver's own, found through an -I folder;
        # <linux/...> is the kernel's.
        "drivers/net/fixinc/sub/part.c": ('#include "part.h"\n#include <linux/kernel.h>\n'
                                          "#include <angle/deep.h>\n"),
        "drivers/net/shared/angle/deep.h": "",
        "drivers/net/shared/shared.h": '#include "deeper.h"\n',
        "drivers/net/shared/deeper.h": "", "drivers/net/shared/unused.c": "",
    })
    (mod,) = parse_makefile(INCLUDES, "drivers/net/fixinc")
    # Variables other than $(srctree) and $(src), system folders and folders above the
    # tree are not the tree's: left as they are.
    assert mod.include_dirs() == ["drivers/net/fixinc", "drivers/net/shared",
                                  "drivers/net/fixinc/sub"]
    src = stage_from_tree(tree, "fixinc", tmp_path / "stage")
    assert src.include_dirs == ("drivers/net/fixinc", "drivers/net/shared",
                                "drivers/net/fixinc/sub")
    assert {"drivers/net/shared/shared.h", "drivers/net/shared/deeper.h",
            "drivers/net/shared/angle/deep.h"} <= set(src.files)
    assert "drivers/net/shared/unused.c" not in src.files


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
    return root


@pytest.fixture
def kernel_tree(tmp_path: Path) -> Path:
    return write(tmp_path / "linux", {
        "drivers/net/Makefile": SHARED,
        "drivers/net/fixnet.c": '#include "fixnet.h"\nint x = netif_rx(0);\n',
        "drivers/net/fixnet.h": '#include "common/ring.h"\n',
        "drivers/net/common/ring.h": '#include "../../../include/outside.h"\n',
        "drivers/net/fixchar.c": "int y;\n",
        "drivers/net/fix/Makefile": COMPOSITE,
        "drivers/net/fix/main.c": '#include "fix.h"\n#include "../common/ring.h"\n',
        "drivers/net/fix/fix.h": "", "drivers/net/fix/ring.c": "",
        "drivers/net/fix/sub/extra.c": "",
        "drivers/net/fix/ethtool.c": "", "drivers/net/fix/dcb.c": "",
        "include/outside.h": "",
    })


def test_index_and_lookup(kernel_tree: Path) -> None:
    index = index_modules(kernel_tree)
    assert set(index) == {"fixnet", "fixchar", "fixdrv"}
    assert lookup(index, "fixdrv", "tree").dir == "drivers/net/fix"
    with pytest.raises(UnknownDriverError, match="did you mean fixdrv"):
        lookup(index, "fixdrw", "tree")
    with pytest.raises(UnknownDriverError) as err:
        lookup(index, "nothing_like_it", "tree")
    assert err.value.exit_code == 1 and "did you mean" not in str(err.value)


def test_dashes_and_underscores_name_the_same_module(tmp_path: Path) -> None:
    index = index_modules(write(tmp_path, {"drivers/x/Makefile":
                                           "obj-$(CONFIG_NE2K_PCI) += ne2k-pci.o\n"}))
    assert lookup(index, "ne2k_pci", "tree").name == "ne2k-pci"


def test_stage_a_module_alone_in_its_folder(kernel_tree: Path, tmp_path: Path) -> None:
    src = stage_from_tree(kernel_tree, "fixdrv", tmp_path / "stage")
    assert src.dir == "drivers/net/fix" and src.config == "CONFIG_FIXDRV"
    # The whole folder (with its subfolder), plus what it includes by relative path,
    # transitively, within the tree; nothing from the rest of drivers/net.
    assert set(src.files) == {
        "drivers/net/fix/Makefile", "drivers/net/fix/main.c", "drivers/net/fix/fix.h",
        "drivers/net/fix/ring.c", "drivers/net/fix/ethtool.c", "drivers/net/fix/dcb.c",
        "drivers/net/fix/sub/extra.c", "drivers/net/common/ring.h", "include/outside.h"}
    assert (tmp_path / "stage/drivers/net/fix/Makefile").read_text() == COMPOSITE


def test_stage_a_module_that_shares_its_makefile(kernel_tree: Path, tmp_path: Path) -> None:
    src = stage_from_tree(kernel_tree, "fixnet", tmp_path / "stage")
    assert set(src.files) == {"drivers/net/fixnet.c", "drivers/net/fixnet.h",
                              "drivers/net/common/ring.h", "include/outside.h",
                              "drivers/net/Kbuild"}
    kbuild = (tmp_path / "stage/drivers/net/Kbuild").read_text()
    assert "obj-m += fixnet.o\n" in kbuild
    assert "fixchar" not in kbuild and "ccflags-y += -DFIX" in kbuild


def test_source_digest_follows_content(kernel_tree: Path, tmp_path: Path) -> None:
    one = stage_from_tree(kernel_tree, "fixdrv", tmp_path / "a").digest()
    assert stage_from_tree(kernel_tree, "fixdrv", tmp_path / "b").digest() == one
    (kernel_tree / "drivers/net/fix/ring.c").write_text("int changed;\n")
    assert stage_from_tree(kernel_tree, "fixdrv", tmp_path / "c").digest() != one


def test_bad_trees_and_dirs(tmp_path: Path) -> None:
    with pytest.raises(PathError, match="not a kernel source tree"):
        stage_from_tree(tmp_path, "x", tmp_path / "s1")
    with pytest.raises(PathError, match="no Makefile or Kbuild"):
        stage_from_dir(tmp_path, "x", tmp_path / "s2")
    with pytest.raises(PathError, match="not a directory"):
        stage_from_dir(tmp_path / "nope", "x", tmp_path / "s3")


def make_tarball(path: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """An .tar.xz; a str value makes a symbolic link to it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    path.write_bytes(lzma.compress(raw.getvalue()))
    return path


WANTED = re.compile(r"drivers/net/.*")


def test_extract_keeps_only_what_is_wanted(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "linux-source-9.9.tar.xz", [
        ("linux-source-9.9/drivers/net/a.c", b"int a;\n"),
        ("linux-source-9.9/fs/b.c", b"int b;\n"),
    ])
    assert extract(tarball, tmp_path / "out", WANTED) == 1
    assert (tmp_path / "out/drivers/net/a.c").read_text() == "int a;\n"
    assert not (tmp_path / "out/fs").exists()


@pytest.mark.parametrize(("member", "content", "message"), [
    ("linux-source-9.9/drivers/net/../../../evil.c", b"x", "escapes the target folder"),
    ("/etc/evil.c", b"x", "escapes the target folder"),
    ("linux-source-9.9/drivers/net/link.c", "/etc/passwd", "refused"),
    ("linux-source-9.9/drivers/net/up.c", "../../../../etc/passwd", "refused"),
])
def test_extract_refuses_members_escaping(tmp_path: Path, member: str, content: bytes | str,
                                          message: str) -> None:
    tarball = make_tarball(tmp_path / "t.tar.xz", [(member, content)])
    with pytest.raises(TarballError, match=message):
        extract(tarball, tmp_path / "out", WANTED)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "evil.c").exists()


def test_extract_admits_inner_links_and_drops_set_id_bits(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        suid = tarfile.TarInfo("linux-source-9.9/drivers/net/a.c")
        suid.size, suid.mode, suid.uid, suid.uname = 2, 0o4777, 4242, "nobody"
        tar.addfile(suid, io.BytesIO(b"a\n"))
        link = tarfile.TarInfo("linux-source-9.9/drivers/net/sub/b.c")
        link.type, link.linkname = tarfile.SYMTYPE, "../a.c"
        tar.addfile(link)
        hard = tarfile.TarInfo("linux-source-9.9/drivers/net/c.c")
        hard.type, hard.linkname = tarfile.LNKTYPE, "linux-source-9.9/drivers/net/a.c"
        tar.addfile(hard)
    tarball = tmp_path / "t.tar.xz"
    tarball.write_bytes(lzma.compress(raw.getvalue()))
    assert extract(tarball, tmp_path / "out", WANTED) == 3
    out = tmp_path / "out/drivers/net"
    assert (out / "sub/b.c").read_text() == (out / "c.c").read_text() == "a\n"
    assert (out / "a.c").stat().st_mode & 0o7002 == 0
    assert (out / "a.c").stat().st_uid == os.getuid()


def test_extract_refuses_devices(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        dev = tarfile.TarInfo("linux-source-9.9/drivers/net/mem")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 1
        tar.addfile(dev)
    tarball = tmp_path / "t.tar.xz"
    tarball.write_bytes(lzma.compress(raw.getvalue()))
    with pytest.raises(TarballError, match="not a file, folder or link"):
        extract(tarball, tmp_path / "out", WANTED)
    assert not (tmp_path / "out/drivers/net/mem").exists()


def test_corrupt_or_missing_tarball_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "linux-source-9.9.tar.xz"
    bad.write_bytes(b"this is not xz data at all" * 10)
    with pytest.raises(TarballError) as err:
        TarballCache(bad).index()
    assert err.value.exit_code == 1
    with pytest.raises(PathError, match=r"install the Debian package linux-source-9\.8"):
        TarballCache(tmp_path / "linux-source-9.8.tar.xz")


def test_tarball_cache_indexes_once(tmp_path: Path, kernel_tree: Path) -> None:
    members: list[tuple[str, bytes | str]] = [
        (f"linux-source-9.9/{p.relative_to(kernel_tree).as_posix()}", p.read_bytes())
        for p in sorted(kernel_tree.rglob("*")) if p.is_file()]
    tarball = make_tarball(tmp_path / "linux-source-9.9.tar.xz", members)
    cache = TarballCache(tarball)
    assert not cache.extracted
    assert set(cache.index()) == {"fixnet", "fixchar", "fixdrv"}
    assert cache.extracted
    tarball.write_bytes(b"")  # a second index comes from the cache, not the tarball
    again = TarballCache.__new__(TarballCache)
    again.__dict__.update(cache.__dict__)
    assert set(again.index()) == {"fixnet", "fixchar", "fixdrv"}
    module = lookup(cache.index(), "fixnet", "t")
    src = stage(cache.tree_for(module), module, tmp_path / "stage", "tarball", tarball)
    assert "drivers/net/fixnet.c" in src.files
