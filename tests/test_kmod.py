"""The PFQ module (kmod/) against Debian's 6.1 and 6.12 kernels, read back with pyelftools.

kbuild tier: pfq.ko builds clean at W=1, exports exactly the hooks the rules name for
that kernel (GPL, CRCs as in Module.symvers), carries the kernel's vermagic, and a
stand-in driver including <pfq/hooks.h> compiles, sees the kernel functions' prototypes
and links against those CRCs. Each check is also run on a tampered copy, to show it can
fail. unit tier: the readers reject bad input with omatic errors.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

import omatic.build.kbuild
from kbuild_fixtures import in_tree_module, kmod_build  # noqa: F401  (fixture)
from omatic.build.kbuild import KmodBuild, build_kmod, check_kmod, expected_hooks
from omatic.data import KMOD_DIR
from omatic.errors import BuildError, OutputExistsError, PathError
from omatic.kernels.find import find_kernel
from omatic.kernels.kernel import Kernel
from omatic.kernels.symvers import read_symvers
from omatic.lab.hooks import kmod_failures
from omatic.rules import Rule
from omatic.verify.modfile import KernelModule

kbuild = pytest.mark.kbuild
unit = pytest.mark.unit


def _check(build: KmodBuild, rules: list[Rule], ko: Path | None = None,
           symvers: Path | None = None) -> list[str]:
    return check_kmod(ko or build.ko, symvers or build.symvers, build.kernel.release,
                      build.kernel.vermagic(), rules)


@kbuild
def test_builds_clean_at_w1(kmod_build: KmodBuild) -> None:  # noqa: F811
    assert kmod_build.ko.is_file() and kmod_build.symvers.is_file()
    assert kmod_build.warnings() == []
    # The build ran in a copy: the checkout holds no build products.
    assert not [p for p in KMOD_DIR.rglob("*") if p.suffix in (".o", ".ko", ".cmd")]


@kbuild
def test_exports_are_the_rules_hooks(kmod_build: KmodBuild, rules: list[Rule]) -> None:  # noqa: F811
    exports = KernelModule(kmod_build.ko).exports()
    assert set(exports) == expected_hooks(rules, kmod_build.kernel.release)
    # netif_rx_ni left in 5.18: the probe must have kept its hook out on 6.x.
    assert "pfq_netif_rx_ni" not in exports
    assert all(export.gpl for export in exports.values())


@kbuild
def test_symvers_crcs_are_the_modules(kmod_build: KmodBuild) -> None:  # noqa: F811
    exports = KernelModule(kmod_build.ko).exports()
    table = read_symvers(kmod_build.symvers)
    assert {name: e.crc for name, e in exports.items()} == {n: e.crc for n, e in table.items()}
    assert {e.export for e in table.values()} == {"EXPORT_SYMBOL_GPL"}
    assert all(e.module.endswith("/pfq") for e in table.values())


@kbuild
def test_contract_holds(kmod_build: KmodBuild, rules: list[Rule]) -> None:  # noqa: F811
    assert _check(kmod_build, rules) == []


@kbuild
def test_vermagic_is_the_kernels(kmod_build: KmodBuild) -> None:  # noqa: F811
    info = KernelModule(kmod_build.ko).modinfo()
    computed = kmod_build.kernel.vermagic()
    assert info["vermagic"] == [computed]
    assert info["license"] == ["GPL"]
    reference = in_tree_module(kmod_build.kernel.release)
    if reference is not None:  # the image is installed: its modules are the reference
        assert KernelModule(reference).modinfo()["vermagic"] == [computed]


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1, old
    return data.replace(old, new)


@kbuild
@pytest.mark.parametrize("tamper, expect", [
    ("license", "license is"),
    ("vermagic", "vermagic is"),
    ("export_renamed", "hooks not exported: pfq_gro_frags"),
    ("crc", "CRC of pfq_netif_rx"),
    ("symvers_type", "says pfq_gro_receive is EXPORT_SYMBOL"),
    ("symvers_missing", "pfq_netif_receive_skb is missing from"),
])
def test_tampered_module_fails(kmod_build: KmodBuild, rules: list[Rule],  # noqa: F811
                               tmp_path: Path, tamper: str, expect: str) -> None:
    ko = tmp_path / "pfq.ko"
    symvers = tmp_path / "Module.symvers"
    data = kmod_build.ko.read_bytes()
    text = kmod_build.symvers.read_text()
    release = kmod_build.kernel.release.encode()
    if tamper == "license":
        data = _replace_once(data, b"license=GPL\0", b"license=BSD\0")
    elif tamper == "vermagic":
        data = _replace_once(data, b"vermagic=" + release, b"vermagic=" + release[::-1])
    elif tamper == "export_renamed":
        data = _replace_once(data, b"__ksymtab_pfq_gro_frags\0", b"__ksymtab_pfq_gro_frbgs\0")
    lines = text.splitlines(keepends=True)
    if tamper == "crc":
        lines = [f"{int(ln.split()[0], 16) ^ 1:#010x}{ln[10:]}"
                 if "\tpfq_netif_rx\t" in ln else ln for ln in lines]
    elif tamper == "symvers_type":
        lines = [ln.replace("EXPORT_SYMBOL_GPL", "EXPORT_SYMBOL")
                 if "\tpfq_gro_receive\t" in ln else ln for ln in lines]
    elif tamper == "symvers_missing":
        lines = [ln for ln in lines if "\tpfq_netif_receive_skb\t" not in ln]
    ko.write_bytes(data)
    symvers.write_text("".join(lines))
    problems = _check(kmod_build, rules, ko, symvers)
    assert any(expect in p for p in problems), problems


@kbuild
def test_rules_disagreeing_with_the_module_fail(kmod_build: KmodBuild,  # noqa: F811
                                                rules: list[Rule]) -> None:
    by_callee = {rule.callee: rule for rule in rules}
    # A rule for a hook pfq.ko lacks.
    bogus = dataclasses.replace(by_callee["netif_rx"], callee="netif_bogus",
                                hook="pfq_netif_bogus")
    assert any("hooks not exported: pfq_netif_bogus" in p
               for p in _check(kmod_build, [*rules, bogus]))
    # An exported hook no rule names.
    fewer = [rule for rule in rules if rule.callee != "napi_gro_frags"]
    assert any("named by no rule" in p and "pfq_gro_frags" in p
               for p in _check(kmod_build, fewer))
    # netif_rx_ni said to still exist: its hook must then be exported.
    kept = [dataclasses.replace(rule, until="") if rule.callee == "netif_rx_ni" else rule
            for rule in rules]
    assert any("pfq_netif_rx_ni" in p for p in _check(kmod_build, kept))


_USER_KBUILD = "obj-m := pfq_user.o\nccflags-y := -I{include}\n"

_USER_C = """\
// SPDX-License-Identifier: GPL-2.0
/* A stand-in for a rewritten driver: the hook header alone first, then kernel headers. */
#include <pfq/hooks.h>
#include <linux/module.h>
#include <linux/netdevice.h>
#include <pfq/hooks.h>

#define SAME_TYPE(hook, callee) static_assert( \\
	__builtin_types_compatible_p(typeof(hook), typeof(callee)), \\
	#hook " does not have the prototype of " #callee)
{asserts}

static void *const pfq_user_hooks[] __used = {{ {hooks} }};

static int __init pfq_user_init(void)
{{
	return 0;
}}
module_init(pfq_user_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pfq-omatic test: calls the PFQ hooks");
"""


def _build_user(build: KmodBuild, rules: list[Rule],
                where: Path) -> subprocess.CompletedProcess[str]:
    """Build the stand-in driver for the rules' hooks on that kernel, against pfq.ko."""
    live = [rule for rule in rules if rule.exists_in(build.kernel.release)]
    where.mkdir()
    (where / "Kbuild").write_text(_USER_KBUILD.format(include=build.dir / "include"))
    (where / "pfq_user.c").write_text(_USER_C.format(
        asserts="\n".join(f"SAME_TYPE({r.hook}, {r.callee});" for r in live),
        hooks=", ".join(r.hook for r in live)))
    return subprocess.run(
        ["make", "-C", str(build.kernel.build_dir), f"M={where}", "-j2",
         f"KBUILD_EXTRA_SYMBOLS={build.symvers}", "modules"],
        capture_output=True, text=True, check=False)


@kbuild
def test_hook_header_serves_a_driver(kmod_build: KmodBuild, rules: list[Rule],  # noqa: F811
                                     tmp_path: Path) -> None:
    run = _build_user(kmod_build, rules, tmp_path / "user")
    assert run.returncode == 0, run.stdout + run.stderr
    user = KernelModule(tmp_path / "user" / "pfq_user.ko")
    assert user.modinfo()["depends"] == ["pfq"]
    versions = user.versions()
    table = read_symvers(kmod_build.symvers)
    hooks = expected_hooks(rules, kmod_build.kernel.release)
    assert hooks <= user.undefined()
    assert {hook: versions[hook] for hook in hooks} == {hook: table[hook].crc for hook in hooks}


@kbuild
def test_hook_header_catches_a_wrong_prototype(kmod_build: KmodBuild,  # noqa: F811
                                               rules: list[Rule], tmp_path: Path) -> None:
    # Pretend pfq_gro_frags stands for napi_gro_receive: the static_assert must fire.
    wrong = [dataclasses.replace(r, callee="napi_gro_receive") if r.callee == "napi_gro_frags"
             else r for r in rules if r.callee != "napi_gro_receive"]
    run = _build_user(kmod_build, wrong, tmp_path / "user")
    assert run.returncode != 0
    message = "pfq_gro_frags does not have the prototype of napi_gro_receive"
    assert message in run.stdout + run.stderr


@kbuild
def test_build_failure_reports_the_compiler(kmod_build: KmodBuild, tmp_path: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "kmod"
    shutil.copytree(KMOD_DIR, broken)
    with open(broken / "pfq_ring.c", "a") as f:
        f.write("\nint pfq_broken(void) { return undeclared_thing; }\n")
    monkeypatch.setattr(omatic.build.kbuild, "KMOD_DIR", broken)
    with pytest.raises(BuildError) as err:
        build_kmod(kmod_build.kernel.build_dir, tmp_path / "out")
    assert "undeclared_thing" in str(err.value)
    assert err.value.exit_code == 2


@unit
def test_find_kernel_without_headers(tmp_path: Path) -> None:
    with pytest.raises(PathError) as err:
        find_kernel(tmp_path)
    assert err.value.exit_code == 1
    with pytest.raises(PathError):
        find_kernel("0.0.0-no-such-kernel", archive=False)


@unit
def test_build_refuses_a_non_empty_output(tmp_path: Path) -> None:
    header = tmp_path / "k" / "include/generated/utsrelease.h"
    header.parent.mkdir(parents=True)
    header.write_text('#define UTS_RELEASE "6.1.0-0-test"\n')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(OutputExistsError):
        build_kmod(tmp_path / "k", tmp_path / "out")


@unit
def test_expected_vermagic_from_config(tmp_path: Path) -> None:
    header = tmp_path / "include/generated/utsrelease.h"
    header.parent.mkdir(parents=True)
    header.write_text('#define UTS_RELEASE "6.1.0-0-test"\n')
    (tmp_path / ".config").write_text(
        "CONFIG_SMP=y\nCONFIG_PREEMPT_BUILD=y\n# CONFIG_MODULE_UNLOAD is not set\n"
        "CONFIG_MODVERSIONS=y\n")
    assert find_kernel(tmp_path).vermagic() == "6.1.0-0-test SMP preempt modversions "


@unit
def test_readers_reject_bad_input(tmp_path: Path) -> None:
    not_elf = tmp_path / "x.ko"
    not_elf.write_bytes(b"not an ELF file at all")
    with pytest.raises(BuildError, match="not a valid ELF"):
        KernelModule(not_elf)
    with pytest.raises(PathError):
        KernelModule(tmp_path / "missing.ko")
    symvers = tmp_path / "Module.symvers"
    symvers.write_text("0x1234\tonly_two_fields\n")
    with pytest.raises(BuildError, match=r"Module\.symvers:1"):
        read_symvers(symvers)
    symvers.write_text("0xZZ\tname\tvmlinux\tEXPORT_SYMBOL\t\n")
    with pytest.raises(BuildError, match="bad CRC"):
        read_symvers(symvers)
    symvers.write_text("0x0000beef\tname\tvmlinux\tEXPORT_SYMBOL\t\n")
    assert read_symvers(symvers)["name"].crc == 0xBEEF


@unit
def test_a_callee_that_became_an_inline_resolves_to_what_it_calls(tmp_path: Path) -> None:
    # Debian's layout: the flavor's folder, and the common one holding include/.
    build = tmp_path / "linux-headers-7.9.1+deb14-amd64"
    common = tmp_path / "linux-headers-7.9.1+deb14-common" / "include" / "linux"
    common.mkdir(parents=True)
    build.mkdir()
    (common / "netdevice.h").write_text(
        "gro_result_t gro_receive_skb(struct gro_node *gro, struct sk_buff *skb);\n"
        "static inline gro_result_t napi_gro_receive(struct napi_struct *napi,\n"
        "\t\t\t\t\t    struct sk_buff *skb)\n{\n"
        "\tif (unlikely(!skb)) { return GRO_DROP; }\n"
        "\treturn gro_receive_skb(&napi->gro, skb);\n}\n"
        "static inline int not_this(void) { return napi_gro_flush(0); }\n")
    (build / "Module.symvers").write_text(
        "0x1\tgro_receive_skb\tvmlinux\tEXPORT_SYMBOL\t\n"
        "0x2\tnetif_rx\tvmlinux\tEXPORT_SYMBOL\t\n"
        "0x3\tnapi_gro_flush\tvmlinux\tEXPORT_SYMBOL\t\n")
    kernel = Kernel("7.9.1+deb14-amd64", build)
    assert kernel.callee_symbols("napi_gro_receive") == ("gro_receive_skb",)
    assert kernel.callee_symbols("netif_rx") == ("netif_rx",)
    assert kernel.callee_symbols("no_such_function") == ()


@unit
def test_hook_lab_fails_on_each_warning_of_pfq_ko(tmp_path: Path) -> None:
    """`pfq-omatic hooks` proves pfq.ko W=1 clean: each compiler or modpost warning in its
    build log is a failure of its own, and a clean log none."""
    kernel = Kernel(release="6.1.0-56-amd64", build_dir=tmp_path)
    log = ("  CC [M]  pfq_group.o\n"
           "pfq_group.c:248:6: warning: unused variable 'snap' [-Wunused-variable]\n"
           "WARNING: modpost: missing MODULE_DESCRIPTION() in pfq.o\n"
           "  LD [M]  pfq.ko\n")
    dirty = KmodBuild(kernel=kernel, dir=tmp_path, log=log, seconds=1.0)
    assert kmod_failures(dirty) == [
        ("pfq.ko at W=1: pfq_group.c:248:6: warning: unused variable 'snap' "
         "[-Wunused-variable]"),
        "pfq.ko at W=1: WARNING: modpost: missing MODULE_DESCRIPTION() in pfq.o"]
    clean = dataclasses.replace(dirty, log="  CC [M]  pfq_group.o\n  LD [M]  pfq.ko\n")
    assert kmod_failures(clean) == []
