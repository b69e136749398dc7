"""What the vm tier needs of the machine, checked the same way by every guest test."""

from __future__ import annotations

import shutil

import pytest

from omatic.kernels.kernel import Kernel
from omatic.lab.vm import QEMU


def need_vm(kernel: Kernel) -> None:
    """Fail (never skip) when QEMU or the kernel's boot image is missing."""
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is missing: `make setup` installs qemu-system-x86")
    if kernel.boot_image is None:
        pytest.fail(f"/boot/vmlinuz-{kernel.release} is missing: install "
                    f"linux-image-{kernel.release}")
