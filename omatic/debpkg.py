"""What the Debian packages pfq-omatic makes share (pfq-omatic-dkms, libpcap0.8-pfq):
their Maintainer and lintian's verdict on them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from omatic.errors import InfraError


def maintainer() -> str:
    """A package's Maintainer: DEBFULLNAME and DEBEMAIL, as Debian's tools take them."""
    name = os.environ.get("DEBFULLNAME", "pfq-omatic")
    return f"{name} <{os.environ.get('DEBEMAIL', 'pfq-omatic@example.org')}>"


def run_lintian(deb: Path) -> list[str]:
    """lintian's tags for `deb` (E:, W:, I: lines)."""
    if shutil.which("lintian") is None:
        raise InfraError("lintian is not installed; run `make setup`")
    # Exit 2: an error tag (--fail-on's default); exit 1: lintian itself failed.
    run = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb)],
                         capture_output=True, text=True, check=False)
    if run.returncode not in (0, 2) or run.stderr.strip().startswith("Traceback"):
        raise InfraError(f"lintian failed (exit {run.returncode}): {run.stderr.strip()[:300]}")
    return [line for line in run.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")]
