"""Fixtures of the kbuild tier: installed Debian kernels, pfq.ko built once per kernel.

Imported by the test modules that need them (tests/conftest.py belongs to the rewriter
tests); pytest finds a fixture by name once it is imported into a test module.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from omatic.build.kbuild import KmodBuild, build_kmod
from omatic.kernels.find import find_kernel

#: Kernel series the kmod must build for, and the Debian releases that provide them.
KERNEL_RELEASES = {"6.1": "6.1.*-amd64", "6.12": "6.12.*+deb12-amd64"}


def installed_release(series: str) -> str:
    """The newest installed Debian kernel release of `series` that has headers.

    Fails (not skips) when there is none: `make setup` installs them, and a kbuild tier
    that silently tests nothing would look green.
    """
    found = [path.parent.name for path in Path("/lib/modules").glob(
        f"{KERNEL_RELEASES[series]}/build") if (path / "include/generated").is_dir()]
    if not found:
        pytest.fail(f"no kernel headers for {series}: `make setup` installs them")

    def key(release: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", release))

    return max(found, key=key)


def in_tree_module(release: str) -> Path | None:
    """One module shipped with the kernel image (its vermagic is the reference), if any."""
    kernel = Path("/lib/modules") / release / "kernel" / "drivers/net/ethernet/intel/e1000e"
    return next(iter(sorted(kernel.glob("e1000e.ko*"))), None)


@pytest.fixture(scope="session", params=sorted(KERNEL_RELEASES))
def kmod_build(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> KmodBuild:
    """pfq.ko built at W=1 with -j2 in a temp copy of kmod/, once per kernel series."""
    release = installed_release(request.param)
    out = tmp_path_factory.mktemp(f"kmod-{request.param}")
    return build_kmod(find_kernel(release).build_dir, out / "pfq", jobs=2)
