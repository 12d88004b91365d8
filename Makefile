# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck unit sysdeps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m shadowproxy.demo --config config/demo.yaml

test: check sysdeps
	$(BIN)/pytest

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check shadowproxy tests benchmarks
	$(BIN)/ruff format --check shadowproxy tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# Debian packages some tests need (headless chromium for the HTML report, nginx and wrk for
# the benchmark smoke run). Installed only where missing, and only when we may (root).
SYSPKGS := chromium chromium-driver nginx wrk
sysdeps:
	@missing=""; \
	for b in chromium chromedriver nginx wrk; do command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing=yes; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $(SYSPKGS)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSPKGS) >/dev/null) \
	      || echo "warning: could not install $(SYSPKGS); tests that need them will be skipped"; \
	  else echo "warning: not root, $(SYSPKGS) not installed; tests that need them will be skipped"; fi; \
	fi

bench: $(STAMP) sysdeps
	benchmarks/run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
