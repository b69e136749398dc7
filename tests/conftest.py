"""Shared fixtures: an isolated home per session, the rules, real kernel driver trees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from omatic.build.source import TarballCache
from omatic.errors import UserError
from omatic.kernels.find import find_kernel
from omatic.kernels.kernel import Kernel
from omatic.rules import Rule, load_rules

FIXTURES = Path(__file__).parent / "fixtures"
#: Kernel series whose Debian linux-source tarball the real-kernel tests use.
KERNEL_SERIES = ("6.1", "6.12")


TIERS = ("unit", "kbuild", "vm", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test belongs to a tier: `make test` selects by tier, so an unmarked test would
    silently never run."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            raise pytest.UsageError(f"{item.nodeid} has no tier marker ({', '.join(TIERS)})")


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """HOME and the XDG dirs point into a temp dir: no test reads or fills the user's."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        for var, sub in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
                         ("XDG_DATA_HOME", ".local/share")):
            mp.setenv(var, str(home / sub))
        yield


@pytest.fixture(scope="session")
def rules() -> list[Rule]:
    return load_rules()


def source_tarball(series: str) -> Path:
    """Debian's linux-source tarball of a series; fails (not skips) when it is missing."""
    tarball = Path(f"/usr/src/linux-source-{series}.tar.xz")
    if not tarball.is_file():
        pytest.fail(f"{tarball} is missing: `make setup` installs linux-source-{series}")
    return tarball


@pytest.fixture(scope="session", params=KERNEL_SERIES)
def kernel_drivers_net(request: pytest.FixtureRequest) -> Path:
    """drivers/net of a real kernel, as the build's tarball cache holds it (extracted from
    Debian's tarball once per session, into the session's isolated cache)."""
    cache = TarballCache(source_tarball(request.param))
    cache.index()
    return cache.tree / "drivers" / "net"


@pytest.fixture(scope="session", params=KERNEL_SERIES)
def kernel(request: pytest.FixtureRequest) -> Kernel:
    """An installed Debian kernel of each series; fails (not skips) without its headers."""
    try:
        return find_kernel(request.param)
    except UserError as err:
        pytest.fail(f"{err} (`make setup` installs the headers)")
