"""The kernels of Debian's archive, read through apt from a small archive made here."""

from __future__ import annotations

from pathlib import Path

import pytest

from omatic.kernels.archive import (
    ArchiveIndexError,
    ArchiveKernel,
    KernelNotServedError,
    UnknownKernelError,
    find_available,
    matrix_kernels,
    read_kernels,
)
from omatic.kernels.system import Suite

pytestmark = pytest.mark.unit

def stanza(name: str, depends: str = "") -> str:
    return (f"Package: {name}\nVersion: 1\nArchitecture: amd64\n"
            + (f"Depends: {depends}\n" if depends else "") + "\n")


#: 9.9.0-1-amd64 is whole. 9.9.0-1-rt-amd64's image lingers without its headers (as the
#: signed images outlive the linux source that built them); 9.8.0-3-cloud-amd64 has
#: headers whose -common package is gone and no linux-source-9.8.
PACKAGES = "".join(stanza(name) for name in (
    "linux-image-9.9.0-1-amd64", "linux-image-9.9.0-1-rt-amd64", "linux-image-9.9.0-1-amd64-dbg",
    "linux-image-9.8.0-3-cloud-amd64", "linux-image-9.9.0-1-amd64-unsigned",
    "linux-headers-9.9.0-1-common", "linux-kbuild-9.9", "linux-source-9.9", "hello",
    # A metapackage tracking the series, with headers of the same name: no kernel.
    "linux-image-9.9-amd64", "linux-headers-9.9-amd64")) + (
    stanza("linux-headers-9.9.0-1-amd64", "linux-headers-9.9.0-1-common (= 1), "
           "linux-kbuild-9.9 (>= 1) | linux-kbuild-9.9-alt, gcc-14")
    + stanza("linux-headers-9.8.0-3-cloud-amd64", "linux-headers-9.8.0-3-common (= 1)"))


def local_suite(tmp_path: Path) -> Suite:
    """A suite whose archive is a folder here (no Release file: trusted by option)."""
    index = tmp_path / "archive/dists/fake/main/binary-amd64"
    index.mkdir(parents=True)
    (index / "Packages").write_text(PACKAGES)
    return Suite(name="fake", path=tmp_path / "fake.toml", release="99", sources=(
        f"deb [trusted=yes allow-insecure=yes] file:{tmp_path / 'archive'} fake main",))


def test_images_of_our_flavors_are_kernels(tmp_path: Path) -> None:
    kernels = read_kernels(local_suite(tmp_path))
    assert sorted(k.release for k in kernels) == [
        "9.8.0-3-cloud-amd64", "9.9.0-1-amd64", "9.9.0-1-rt-amd64"]
    assert {k.suite for k in kernels} == {"fake"}
    assert {k.flavor for k in kernels} == {"amd64", "rt-amd64", "cloud-amd64"}


def test_a_kernel_is_offered_only_with_what_its_build_needs(tmp_path: Path) -> None:
    kernels = {k.release: k.missing for k in read_kernels(local_suite(tmp_path))}
    assert kernels == {
        "9.9.0-1-amd64": (),
        "9.9.0-1-rt-amd64": ("linux-headers-9.9.0-1-rt-amd64",),
        "9.8.0-3-cloud-amd64": ("linux-source-9.8", "linux-headers-9.8.0-3-common")}


def test_a_kernel_not_served_whole_names_what_is_missing(tmp_path: Path) -> None:
    kernels = read_kernels(local_suite(tmp_path))
    assert find_available("9.9", kernels).release == "9.9.0-1-amd64"
    with pytest.raises(KernelNotServedError) as err:
        find_available("9.9.0-1-rt-amd64", kernels)
    assert str(err.value) == (
        "Debian's archive no longer serves all of kernel 9.9.0-1-rt-amd64: "
        "linux-headers-9.9.0-1-rt-amd64 missing; nearest that can be had: 9.9.0-1-amd64 "
        "(pfq-omatic kernels --available)")
    assert "--include" not in str(err.value)
    with pytest.raises(KernelNotServedError, match=r"9\.8\.0-3-cloud-amd64: linux-source-9\.8"):
        find_available("9.8-cloud-amd64", kernels)


def test_an_unreachable_archive_is_an_infrastructure_error(tmp_path: Path) -> None:
    # Nothing listens on port 9 of the loopback: the connection is refused at once.
    suite = Suite(name="fake", path=tmp_path / "fake.toml", release="99",
                  sources=("deb http://127.0.0.1:9/debian fake main",))
    with pytest.raises(ArchiveIndexError) as err:
        read_kernels(suite)
    assert err.value.exit_code == 2 and "fake" in str(err.value)


def test_a_kernel_is_found_by_release_series_or_flavor() -> None:
    offered = [ArchiveKernel(r, "sid", "sid") for r in (
        "7.2.13+deb14-amd64", "7.2.13+deb14-rt-amd64", "7.1.2+deb14-amd64")]
    assert find_available("7.2", offered).release == "7.2.13+deb14-amd64"
    assert find_available("7.2-rt-amd64", offered).release == "7.2.13+deb14-rt-amd64"
    assert find_available("7.1.2+deb14-amd64", offered).release == "7.1.2+deb14-amd64"
    with pytest.raises(UnknownKernelError, match=r"nearest: 7\.2\.13"):
        find_available("7.2.13+deb41-amd64", offered)


def test_a_matrix_covers_each_suites_series_and_the_flavors_of_its_newest() -> None:
    offered = [ArchiveKernel(release, archive, suite) for release, archive, suite in [
        (f"5.10.0-{abi}-{flavor}", "bullseye-security", "bullseye")
        for abi in (45, 46) for flavor in ("amd64", "rt-amd64", "cloud-amd64")] + [
        ("6.1.0-56-amd64", "bookworm", "bookworm"),
        ("6.12.117+deb12-amd64", "bookworm-security", "bookworm"),
        ("6.12.117+deb12-rt-amd64", "bookworm-security", "bookworm"),
        ("6.12.117+deb12-cloud-amd64", "bookworm-security", "bookworm"),
        ("6.12.117+deb13-amd64", "trixie", "trixie"),
        ("7.3.4+deb13-amd64", "trixie-backports", "trixie"),
        ("7.3.4+deb13-rt-amd64", "trixie-backports", "trixie"),
        ("7.3.4+deb13-cloud-amd64", "trixie-backports", "trixie"),
        ("7.2.13+deb14-amd64", "sid", "sid"),
        ("7.2.13+deb14-rt-amd64", "sid", "sid"),
        ("7.2.13+deb14-cloud-amd64", "sid", "sid")]]
    chosen = [k.release for k in matrix_kernels(offered)]
    assert [r for r in chosen if r.endswith("-amd64") and "-rt-" not in r
            and "-cloud-" not in r] == ["5.10.0-46-amd64", "6.1.0-56-amd64",
                                        "6.12.117+deb12-amd64", "6.12.117+deb13-amd64",
                                        "7.2.13+deb14-amd64", "7.3.4+deb13-amd64"]
    assert len(chosen) == 6 + 2 * 4
    # A backports kernel brings its newer linux-base from there.
    assert "linux-base/trixie-backports" in offered[-4].packages()
    with pytest.raises(ArchiveIndexError, match=r"no 7\.2 kernel of flavor rt-amd64"):
        matrix_kernels([k for k in offered if k.release != "7.2.13+deb14-rt-amd64"])
    # An index can list a kernel whose packages the archive no longer serves: the newest
    # one it serves is taken instead, and the user told.
    notes: list[str] = []
    chosen = [k.release for k in matrix_kernels(
        offered, lambda k: k.release != "5.10.0-46-rt-amd64", notes.append)]
    assert "5.10.0-45-rt-amd64" in chosen and "5.10.0-46-rt-amd64" not in chosen
    assert notes == [("5.10.0-46-rt-amd64: listed, but the archive does not serve its "
                      "packages; using 5.10.0-45-rt-amd64")]
    with pytest.raises(ArchiveIndexError, match=r"serves no 7\.2 kernel of flavor cloud"):
        matrix_kernels(offered, lambda k: k.release != "7.2.13+deb14-cloud-amd64")
