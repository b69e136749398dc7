"""omatic.verify.checks: built modules checked the way the kernel checks them at load time.

kbuild tier: two tiny modules are built once per kernel (6.1, 6.12) against pfq.ko: a
library exporting one symbol, and a stand-in driver calling pfq_gro_receive, netif_rx
and the library. All checks pass on them; then tampered copies (bytes edited at offsets
pyelftools gives) each fail on the check the kernel would refuse them for. Real in-tree
modules of the installed images pass too. unit tier: extended modversions parsing, on
bytes and on an ELF object gcc builds.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from elftools.elf.elffile import ELFFile

import omatic.kernels.kernel
from kbuild_fixtures import in_tree_module, kmod_build  # noqa: F401  (fixture)
from omatic.build.kbuild import KmodBuild
from omatic.errors import BuildError, PathError, UserError
from omatic.kernels.find import kernel_at
from omatic.kernels.kernel import Kernel
from omatic.verify.checks import VerifyReport, verify_modules
from omatic.verify.modfile import KernelModule, parse_version_ext

kbuild = pytest.mark.kbuild
unit = pytest.mark.unit

_KBUILD = "obj-m := pfqtiny.o pfqtiny_lib.o\n"

_LIB_C = """\
// SPDX-License-Identifier: GPL-2.0
/* pfq-omatic test: a second module of the same build, exporting one symbol. */
#include <linux/module.h>

int pfqtiny_lib_value(int x)
{
	return x + 1;
}
EXPORT_SYMBOL_GPL(pfqtiny_lib_value);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pfq-omatic verify test: library");
"""

# "Dual MIT/GPL" is GPL-compatible and 12 bytes long: room to tamper in "Proprietary".
_DRIVER_C = """\
// SPDX-License-Identifier: GPL-2.0
/* pfq-omatic test: a rewritten driver in miniature (one hook, one entry point left). */
#include <linux/module.h>
#include <linux/netdevice.h>
#include <pfq/hooks.h>

int pfqtiny_lib_value(int x);

gro_result_t pfqtiny_poll(struct napi_struct *napi, struct sk_buff *skb);
gro_result_t pfqtiny_poll(struct napi_struct *napi, struct sk_buff *skb)
{
	if (pfqtiny_lib_value(0))
		return netif_rx(skb) ? GRO_MERGED_FREE : GRO_NORMAL;
	return pfq_gro_receive(napi, skb);
}
EXPORT_SYMBOL_GPL(pfqtiny_poll);

MODULE_LICENSE("Dual MIT/GPL");
MODULE_DESCRIPTION("pfq-omatic verify test: driver");
"""

#: What the rewriter would report for that driver: napi_gro_receive's two sites
#: rewritten, netif_rx's one site only reported.
_REPORT: dict[str, Any] = {"sites": [
    {"callee": "napi_gro_receive", "hook": "pfq_gro_receive", "action": "rewrite"},
    {"callee": "napi_gro_receive", "hook": "pfq_gro_receive", "action": "rewrite"},
    {"callee": "netif_rx", "hook": "pfq_netif_rx", "action": "report"},
]}


@dataclass(frozen=True)
class Tiny:
    #: pfq.ko's build (its Module.symvers is the hooks' CRCs).
    kmod: KmodBuild
    #: The kernel, as omatic.kernels.kernel sees it.
    kernel: Kernel
    #: Build folder of the two tiny modules.
    dir: Path

    @property
    def driver(self) -> Path:
        return self.dir / "pfqtiny.ko"

    @property
    def lib(self) -> Path:
        return self.dir / "pfqtiny_lib.ko"

    def verify(self, *kos: Path, **kwargs: Any) -> VerifyReport:
        kwargs.setdefault("rewrite_report", _REPORT)
        return verify_modules(list(kos) or [self.driver, self.lib], self.kernel,
                              self.kmod.symvers, **kwargs)


@pytest.fixture(scope="session")
def tiny(kmod_build: KmodBuild, tmp_path_factory: pytest.TempPathFactory) -> Tiny:  # noqa: F811
    """The two tiny modules, built once per kernel with -j2 against pfq.ko."""
    where = tmp_path_factory.mktemp(f"tiny-{kmod_build.kernel.release}")
    (where / "Kbuild").write_text(_KBUILD + f"ccflags-y := -I{kmod_build.dir / 'include'}\n")
    (where / "pfqtiny.c").write_text(_DRIVER_C)
    (where / "pfqtiny_lib.c").write_text(_LIB_C)
    run = subprocess.run(
        ["make", "-C", str(kmod_build.kernel.build_dir), f"M={where}", "-j2",
         f"KBUILD_EXTRA_SYMBOLS={kmod_build.symvers}", "modules"],
        capture_output=True, text=True, check=False)
    if run.returncode != 0:
        pytest.fail(f"tiny modules did not build:\n{run.stdout}\n{run.stderr}")
    kernel = kernel_at(kmod_build.kernel.build_dir)
    assert kernel is not None
    return Tiny(kmod=kmod_build, kernel=kernel, dir=where)


def _failed(report: VerifyReport, index: int = 0) -> set[str]:
    return {c.name for c in report.modules[index].checks if c.status == "fail"}


def _details(report: VerifyReport, check: str, index: int = 0) -> str:
    return "\n".join(report.modules[index].check(check).details)


def _section_span(path: Path, name: str) -> tuple[int, bytes]:
    with path.open("rb") as f:
        section = ELFFile(f).get_section_by_name(name)
        assert section is not None, name
        return int(section["sh_offset"]), bytes(section.data())


def _tamper(src: Path, dst: Path, section: str, old: bytes, new: bytes) -> Path:
    """A copy of `src` at `dst` with the one occurrence of `old` in `section` replaced."""
    assert len(old) == len(new)
    offset, data = _section_span(src, section)
    assert data.count(old) == 1, (section, old)
    raw = bytearray(src.read_bytes())
    at = offset + data.index(old)
    raw[at:at + len(old)] = new
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(raw))
    return dst


def _flip_crc(src: Path, dst: Path, symbol: str) -> Path:
    """A copy whose __versions entry for `symbol` carries another CRC."""
    offset, data = _section_span(src, "__versions")
    for start in range(0, len(data), 64):
        if data[start + 8:start + 64].split(b"\0", 1)[0] == symbol.encode():
            raw = bytearray(src.read_bytes())
            raw[offset + start] ^= 0xFF
            dst.write_bytes(bytes(raw))
            return dst
    raise AssertionError(f"{symbol} not in __versions")


# -- the untampered modules ------------------------------------------------------------

@kbuild
def test_tiny_modules_pass(tiny: Tiny) -> None:
    report = tiny.verify()
    assert report.ok, "\n".join(report.lines())
    driver = report.modules[0]
    assert [c.name for c in driver.checks] == ["vermagic", "license", "depends", "hooks",
                                               "entry-points", "symbols", "this_module",
                                               "signature"]
    assert {c.status for c in driver.checks} == {"pass"}
    assert driver.name == "pfqtiny"
    # The library uses no hook: its hooks check is skipped, not vacuously passed.
    assert report.modules[1].check("hooks").status == "skipped"
    assert "pfq_gro_receive" in _details(report, "hooks")


@kbuild
def test_report_shapes(tiny: Tiny) -> None:
    report = tiny.verify()
    data = report.to_json()
    assert set(data) == {"kernel", "ok", "modules"}
    assert data["kernel"] == tiny.kernel.release
    assert set(data["modules"][0]) == {"path", "name", "ok", "checks"}
    assert set(data["modules"][0]["checks"][0]) == {"name", "status", "details"}
    lines = report.lines()
    assert len(lines) == 16  # 8 checks of each module
    assert lines[0].startswith("pfqtiny.ko: vermagic: pass")


@kbuild
def test_without_rewrite_report_hooks_are_inferred(tiny: Tiny) -> None:
    report = tiny.verify(tiny.driver, tiny.lib, rewrite_report=None)
    assert report.ok
    driver = report.modules[0]
    assert driver.check("entry-points").status == "skipped"
    assert driver.check("entry-points").details == ("no rewrite report",)
    assert "pfq_gro_receive" in _details(report, "hooks")


@kbuild
def test_compressed_copies_read_the_same(tiny: Tiny, tmp_path: Path) -> None:
    raw = tiny.driver.read_bytes()
    xz = tmp_path / "pfqtiny.ko.xz"
    xz.write_bytes(lzma.compress(raw, format=lzma.FORMAT_XZ))
    zst = tmp_path / "pfqtiny.ko.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(raw))
    plain = [c.to_json() for c in tiny.verify().modules[0].checks]
    for copy in (xz, zst):
        got = tiny.verify(copy, tiny.lib).modules[0]
        assert [c.to_json() for c in got.checks] == plain, copy.name


# -- the modules of one build resolve each other ---------------------------------------

@kbuild
def test_sibling_module_resolves_symbols(tiny: Tiny) -> None:
    alone = tiny.verify(tiny.driver)
    assert _failed(alone) == {"symbols"}
    assert "pfqtiny: Unknown symbol pfqtiny_lib_value (err -2)" in _details(alone, "symbols")
    assert tiny.verify(tiny.driver, extra_symvers=[tiny.dir / "Module.symvers"]).ok
    assert tiny.verify(tiny.driver, extra_symvers=[tiny.lib]).ok


# -- each tampered copy fails where the kernel would refuse it --------------------------

@kbuild
def test_hook_crc_flipped(tiny: Tiny, tmp_path: Path) -> None:
    bad = _flip_crc(tiny.driver, tmp_path / "pfqtiny.ko", "pfq_gro_receive")
    report = tiny.verify(bad, tiny.lib)
    assert _failed(report) == {"hooks", "symbols"}
    message = "pfqtiny: disagrees about version of symbol pfq_gro_receive"
    assert message in _details(report, "hooks")


@kbuild
def test_kernel_symbol_crc_flipped(tiny: Tiny, tmp_path: Path) -> None:
    bad = _flip_crc(tiny.driver, tmp_path / "pfqtiny.ko", "netif_rx")
    report = tiny.verify(bad, tiny.lib)
    assert _failed(report) == {"symbols"}
    assert "pfqtiny: disagrees about version of symbol netif_rx" in _details(report, "symbols")


@kbuild
def test_module_layout_crc_flipped(tiny: Tiny, tmp_path: Path) -> None:
    bad = _flip_crc(tiny.driver, tmp_path / "pfqtiny.ko", "module_layout")
    report = tiny.verify(bad, tiny.lib)
    assert _failed(report) == {"symbols"}
    assert "disagrees about version of symbol module_layout" in _details(report, "symbols")


@kbuild
def test_vermagic_changed(tiny: Tiny, tmp_path: Path) -> None:
    bad = _tamper(tiny.driver, tmp_path / "pfqtiny.ko", ".modinfo",
                  b" preempt ", b" PREEMPT ")
    report = tiny.verify(bad, tiny.lib)
    assert _failed(report) == {"vermagic"}
    expected = tiny.kernel.vermagic()
    wrong = expected.replace(" preempt ", " PREEMPT ")
    assert f"pfqtiny: version magic '{wrong}' should be '{expected}'" in _details(
        report, "vermagic")


@kbuild
def test_depends_dropped_or_renamed(tiny: Tiny, tmp_path: Path) -> None:
    depends = KernelModule(tiny.driver).modinfo()["depends"][0]
    assert set(depends.split(",")) == {"pfq", "pfqtiny_lib"}
    entry = f"depends={depends}".encode()
    dropped = _tamper(tiny.driver, tmp_path / "dropped" / "pfqtiny.ko", ".modinfo",
                      entry, b"\0" * len(entry))
    report = tiny.verify(dropped, tiny.lib)
    assert _failed(report) == {"depends"}
    details = _details(report, "depends")
    assert "depends does not name pfq:" in details
    assert "'pfqtiny: Unknown symbol pfq_gro_receive (err -2)'" in details
    assert "depends does not name pfqtiny_lib:" in details

    # modpost's order of the names is its own: rename "pfq" wherever it stands.
    names = [b"pfx" if name == b"pfq" else name for name in depends.encode().split(b",")]
    renamed = _tamper(tiny.driver, tmp_path / "renamed" / "pfqtiny.ko", ".modinfo",
                      entry, b"depends=" + b",".join(names))
    report = tiny.verify(renamed, tiny.lib)
    assert _failed(report) == {"depends"}
    assert "depends does not name pfq:" in _details(report, "depends")
    assert "pfqtiny_lib" not in _details(report, "depends")


@kbuild
def test_license_proprietary(tiny: Tiny, tmp_path: Path) -> None:
    bad = _tamper(tiny.driver, tmp_path / "pfqtiny.ko", ".modinfo",
                  b"license=Dual MIT/GPL", b"license=Proprietary\0")
    report = tiny.verify(bad, tiny.lib)
    # The kernel taints, then cannot resolve the GPL-only exports: two checks fail.
    assert _failed(report) == {"license", "symbols"}
    assert "pfqtiny: module license 'Proprietary' taints kernel." in _details(report, "license")
    symbols = _details(report, "symbols")
    assert "pfqtiny: Unknown symbol pfq_gro_receive (err -2): EXPORT_SYMBOL_GPL" in symbols
    assert "Unknown symbol netif_rx" not in symbols  # EXPORT_SYMBOL: still fine


@kbuild
def test_hook_renamed_in_string_table(tiny: Tiny, tmp_path: Path) -> None:
    bad = _tamper(tiny.driver, tmp_path / "pfqtiny.ko", ".strtab",
                  b"\0pfq_gro_receive\0", b"\0pfq_gro_receivX\0")
    report = tiny.verify(bad, tiny.lib)
    assert _failed(report) == {"hooks", "symbols"}
    assert ("import no PFQ hook, though call sites were rewritten to pfq_gro_receive"
            in _details(report, "hooks"))
    assert "pfqtiny: Unknown symbol pfq_gro_receivX (err -2)" in _details(report, "symbols")


@kbuild
def test_entry_point_still_referenced(tiny: Tiny) -> None:
    # A report claiming netif_rx's site was rewritten too: the .ko says otherwise.
    claimed = {"sites": [{**site, "action": "rewrite"} for site in _REPORT["sites"]]}
    report = tiny.verify(rewrite_report=claimed)
    assert _failed(report) == {"entry-points"}
    assert ("netif_rx is still referenced though all 1 of its sites were rewritten to "
            "pfq_netif_rx") in _details(report, "entry-points")


@kbuild
def test_a_site_compiled_out_is_no_defect(tiny: Tiny) -> None:
    # tulip's shape: a site rewritten in a branch the config compiles out. The hook is
    # not imported, the entry point is gone all the same: the module passes, and the
    # report says why that hook is missing.
    claimed = {"sites": [*_REPORT["sites"], {"callee": "netif_receive_skb",
                                              "hook": "pfq_netif_receive_skb",
                                              "action": "rewrite"}]}
    report = tiny.verify(rewrite_report=claimed)
    assert _failed(report) == set()
    assert ("pfq_netif_receive_skb: rewritten, in code this kernel's config compiles out"
            in _details(report, "hooks"))


@kbuild
def test_this_module_size_mismatch(tiny: Tiny, tmp_path: Path) -> None:
    raw = bytearray(tiny.driver.read_bytes())
    with tiny.driver.open("rb") as f:
        elf = ELFFile(f)
        index = next(i for i, s in enumerate(elf.iter_sections())
                     if s.name == ".gnu.linkonce.this_module")
        header = elf["e_shoff"] + index * elf["e_shentsize"]
        size = elf.get_section(index)["sh_size"]
    # Elf64_Shdr: sh_size is the 8 bytes at offset 32.
    raw[header + 32:header + 40] = (size - 64).to_bytes(8, "little")
    bad = tmp_path / "pfqtiny.ko"
    bad.write_bytes(bytes(raw))
    report = tiny.verify(bad, tiny.lib)
    assert _failed(report) == {"this_module"}
    assert ("module pfqtiny: .gnu.linkonce.this_module section size must match the kernel's "
            "built struct module size at run time") in _details(report, "this_module")


@kbuild
def test_this_module_skipped_without_installed_modules(tiny: Tiny, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omatic.kernels.kernel, "MODULES_ROOT", tmp_path)
    report = tiny.verify()
    assert report.ok
    check = report.modules[0].check("this_module")
    assert check.status == "skipped"
    assert "not installed" in check.details[0]


# -- real modules of the installed images -------------------------------------------

@kbuild
def test_in_tree_module_passes(tiny: Tiny) -> None:
    ko = in_tree_module(tiny.kernel.release)
    if ko is None:
        pytest.fail(f"no e1000e module installed for {tiny.kernel.release}")
    report = verify_modules([ko], tiny.kernel, tiny.kmod.symvers)
    module = report.modules[0]
    assert report.ok, "\n".join(report.lines())
    for name in ("vermagic", "symbols", "this_module", "license", "depends"):
        assert module.check(name).status == "pass", name
    assert module.check("hooks").status == "skipped"


# -- errors ------------------------------------------------------------------------------

@kbuild
def test_missing_and_bad_inputs(tiny: Tiny, tmp_path: Path) -> None:
    with pytest.raises(PathError):
        tiny.verify(tmp_path / "absent.ko")
    not_elf = tmp_path / "junk.ko"
    not_elf.write_bytes(b"not an ELF file at all")
    with pytest.raises(BuildError):
        tiny.verify(not_elf)
    with pytest.raises(UserError):
        tiny.verify(rewrite_report={"files": []})


# -- unit: extended modversions ------------------------------------------------------------

@unit
def test_parse_version_ext() -> None:
    crcs = (0x12345678).to_bytes(4, "little") + (0x9ABCDEF0).to_bytes(4, "little")
    # As modpost writes it: one string literal, so a trailing extra NUL.
    names = b"short\0" + b"x" * 80 + b"\0\0"
    assert parse_version_ext(crcs, names) == {"short": 0x12345678, "x" * 80: 0x9ABCDEF0}
    assert parse_version_ext(b"", b"") == {}


@unit
@pytest.mark.parametrize(("crcs", "names", "message"), [
    (b"\x01\0\0", b"a\0", "not a multiple of 4"),
    (b"\x01\0\0\0", b"a", "does not end with a NUL"),
    (b"\x01\0\0\0", b"a\0b\0", "2 names but __version_ext_crcs 1 CRCs"),
    (b"\x01\0\0\0\x02\0\0\0", b"a\0", "1 names but __version_ext_crcs 2 CRCs"),
])
def test_parse_version_ext_rejects(crcs: bytes, names: bytes, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        parse_version_ext(crcs, names)


_EXT_C = """\
struct modversion_info { unsigned long crc; char name[56]; };
static const struct modversion_info vers[]
__attribute__((used, section("__versions"))) = { { 0x11111111, "short" } };
static const unsigned int ext_crcs[]
__attribute__((used, section("__version_ext_crcs"))) = { 0x22222222, 0x33333333 };
static const char ext_names[]
__attribute__((used, section("__version_ext_names"))) =
	"short\\0"
	"%s\\0";
extern int %s(void);
int call(void) { return %s(); }
"""


@unit
def test_module_prefers_extended_modversions(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: it builds the ELF object of this test")
    long_name = "pfq_" + "very_long_" * 8 + "symbol"
    source = tmp_path / "ext.c"
    source.write_text(_EXT_C % (long_name, long_name, long_name))
    obj = tmp_path / "ext.ko"
    subprocess.run(["gcc", "-c", "-O2", "-o", str(obj), str(source)], check=True)
    module = KernelModule(obj)
    assert long_name in module.undefined()
    # The kernel relies on the extended sections when present, not on __versions.
    assert module.versions() == {"short": 0x22222222, long_name: 0x33333333}


# -- signatures ---------------------------------------------------------------------------

def _signing_key(where: Path, name: str) -> tuple[Path, Path]:
    """A new RSA key and its self-signed certificate (PEM key, DER cert), as DKMS makes."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    key_path, cert_path = where / f"{name}.key", where / f"{name}.der"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return key_path, cert_path


def _sign(tiny: Tiny, key: Path, cert: Path, src: Path, dst: Path, hash_: str) -> Path:
    """`src` signed by the kernel's own scripts/sign-file, as DKMS signs, at `dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    subprocess.run([str(tiny.kernel.build_dir / "scripts/sign-file"), hash_, str(key),
                    str(cert), str(dst)], check=True, capture_output=True)
    return dst


@kbuild
def test_a_signature_is_read_as_modinfo_reads_it(tiny: Tiny, tmp_path: Path) -> None:
    key, cert = _signing_key(tmp_path, "pfq-omatic test key")
    signed = _sign(tiny, key, cert, tiny.driver, tmp_path / "pfqtiny.ko", "sha512")
    report = tiny.verify(signed, tiny.lib)
    assert report.ok, "\n".join(report.lines())
    said = _details(report, "signature")
    modinfo = {field: subprocess.run(["modinfo", "-F", field, str(signed)], check=True,
                                     capture_output=True, text=True).stdout.strip()
               for field in ("signer", "sig_key", "sig_hashalgo")}
    assert said.startswith(f"signer {modinfo['signer']!r}, key id {modinfo['sig_key']}, "
                           f"{modinfo['sig_hashalgo']}")
    assert "no certificate to check it with" in said
    assert _details(report, "signature", 1) == "not signed"


@kbuild
def test_a_certificate_accepts_its_own_signature_only(tiny: Tiny, tmp_path: Path) -> None:
    key, cert = _signing_key(tmp_path, "ours")
    _, other = _signing_key(tmp_path, "another")
    signed = _sign(tiny, key, cert, tiny.driver, tmp_path / "signed/pfqtiny.ko", "sha256")
    assert tiny.verify(signed, tiny.lib, cert=cert, cert_required=True).modules[0].ok

    report = tiny.verify(signed, tiny.lib, cert=other)
    assert _failed(report) == {"signature"}
    said = _details(report, "signature")
    assert "pfqtiny: Loading of module with unavailable key is rejected" in said
    assert "signed by another key: ours key id" in said and "the certificate is another" in said

    # One byte of the description changed after signing: the signature no longer holds.
    altered = _tamper(signed, tmp_path / "altered/pfqtiny.ko", ".modinfo",
                      b"license=Dual MIT/GPL", b"license=Dual MIT/GPl")
    report = tiny.verify(altered, tiny.lib, cert=cert)
    assert "signature" in _failed(report)
    assert "pfqtiny: Key was rejected by service" in _details(report, "signature")
    assert "does not verify over the module's content" in _details(report, "signature")

    # Unsigned: fails only where a certificate is required.
    report = tiny.verify(tiny.driver, tiny.lib, cert=cert, cert_required=True)
    assert _failed(report) == {"signature"}
    assert "Loading of unsigned module is rejected" in _details(report, "signature")
    assert tiny.verify(tiny.driver, tiny.lib, cert=cert).ok


@unit
def test_a_bad_certificate_is_one_line(tmp_path: Path) -> None:
    from omatic.verify.signature import Certificate

    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(UserError, match=r"junk\.pem: not an X\.509 certificate"):
        Certificate.load(junk)
    with pytest.raises(PathError, match="cannot read the certificate"):
        Certificate.load(tmp_path / "missing.der")

