# pfq-omatic: one entry point for set-up, the demo and the test gate.
# `make demo` and `make test` install what they need on a fresh Debian 12 machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages the tool and its tests use, on top of what the README says a user starts
# from (Debian 12 with make and python3): python3-venv and ca-certificates for the
# virtualenv and PyPI; the headers, boot images (with their modules) and source tarballs of
# the two kernels we target; the compiler Kbuild needs; QEMU and a static busybox for the
# lab; tcpdump to read the pcap streams of pfq.ko (and, with softflowd, a flow monitor, and
# tshark's dumpcap, as pcap applications on PFQ's libpcap in the lab's guest); mmdebstrap for pristine Debian systems
# (uidmap for its unshare mode, when not root);
# git to clone a checkout into one; Coccinelle as the benchmark's peer.
DEBS := python3-venv ca-certificates git uidmap \
        build-essential bc bison flex libelf-dev libssl-dev xz-utils zstd patch kmod cpio \
        linux-headers-amd64 linux-headers-6.12-amd64 \
        linux-image-amd64 linux-image-6.12-amd64 \
        linux-source-6.1 linux-source-6.12 \
        qemu-system-x86 busybox-static tcpdump softflowd tshark mmdebstrap coccinelle \
        debhelper dh-dkms lintian

.PHONY: setup debs venv demo test lint unit matrix clean

setup: debs venv

# Install only the packages that are missing; apt-get update first, as a fresh machine needs.
debs:
	@missing=$$(for p in $(DEBS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The main job: build and verify an accelerated e1000e for the default kernel, then
# prove it in QEMU (every frame through PFQ, the stack intact, capture exact).
demo: setup
	$(BIN)/pfq-omatic kernels
	$(BIN)/pfq-omatic build e1000e
	$(BIN)/pfq-omatic lab e1000e

lint: venv
	$(BIN)/ruff check omatic tests bench
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -m "unit or kbuild or vm or system" --durations=25

unit: venv
	$(BIN)/pytest -m unit

# The full proof, on every kernel the suites name (amd64; cloud and rt of each suite's
# newest): every manifest driver built, verified and proven in QEMU where QEMU has its NIC,
# and every hook proven by the hook test module (docs/compat.md); then every NIC driver each
# kernel builds, built and verified (docs/compat-all.md). The tables are written even when a
# cell failed; the exit code says whether one did unexpectedly.
matrix: setup
	$(BIN)/pfq-omatic matrix --lab --hooks --out matrix-out \
	  --known-failures docs/known-failures.toml; \
	  status=$$?; cp matrix-out/matrix.md docs/compat.md; \
	  $(BIN)/pfq-omatic matrix --drivers all --out matrix-all-out \
	  --known-failures docs/known-failures.toml; \
	  all=$$?; cp matrix-all-out/matrix.md docs/compat-all.md; \
	  [ $$status -eq 0 ] && exit $$all; exit $$status

clean:
	rm -rf out build matrix-out matrix-all-out .pytest_cache .mypy_cache .ruff_cache
	$(MAKE) -C kmod clean 2>/dev/null || true
