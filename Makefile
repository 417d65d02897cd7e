# Everything a fresh Debian 12 / Raspberry Pi OS machine needs: a venv with the package and its
# test dependencies, and mosquitto for the broker tests and the demo. Works as root and as a user
# (a user needs sudo only when mosquitto is missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup mosquitto browser demo test bench lint clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(STAMP) mosquitto browser

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
	  echo "installing mosquitto from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }

# Debian's chromium renders certificate.html in a test; without it (no root, no sudo) that test is skipped.
browser:
	@{ command -v chromium >/dev/null 2>&1 && [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; } || { \
	  echo "installing chromium, CJK fonts and libfaketime from Debian's packages (page and clock tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq chromium fonts-noto-cjk libfaketime >/dev/null || \
	  echo "warning: chromium/libfaketime not installed; the browser and clock tests will be skipped"; }

demo: setup
	$(BIN)/battery-gateway demo

test: setup lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
