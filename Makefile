# weightgeo: `make demo` and `make test` each set up .venv if it is missing, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Pinned for reproducible installs; pyproject.toml itself asks only for ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: all install demo test lint bench clean

all: test

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/weightgeo demo --out demo-run --overwrite

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Peers that benchmarks compare against (curvlinops) are installed here only, never as
# dependencies of the library.
bench: $(STAMP)
	$(PIP) install --quiet curvlinops-for-pytorch
	$(PY) benchmarks/metric_products.py

clean:
	rm -rf $(VENV) demo-run .pytest_cache
