# weightgeo: `make demo` and `make test` each set up .venv if it is missing, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Pinned for reproducible installs; pyproject.toml itself asks only for ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: all install demo test lint bench bench-sparsify bench-continual bench-connect mutation clean

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
	$(PY) benchmarks/relax_batched.py --nodes 16

# The applications' benchmarks (tens of minutes each on 2 cores; see BENCHMARKS.md).
BENCH_RUNS := runs/bench
$(BENCH_RUNS)/mlp_s%/model.pt: $(STAMP)
	$(VENV)/bin/weightgeo train --model mlp --dataset mnist5k --seed $* --out $(BENCH_RUNS)/mlp_s$* --overwrite

BENCH_MLPS := $(BENCH_RUNS)/mlp_s0/model.pt $(BENCH_RUNS)/mlp_s1/model.pt $(BENCH_RUNS)/mlp_s2/model.pt

bench-sparsify: $(BENCH_MLPS)
	for s in 0 1 2; do $(PY) benchmarks/sparsify_sweep.py run $(BENCH_RUNS)/mlp_s$$s --out $(BENCH_RUNS)/sparsify --seed $$s --budgets 200,500,1000,2000,4000; done
	$(PY) benchmarks/sparsify_sweep.py report --out $(BENCH_RUNS)/sparsify

bench-continual: $(STAMP)
	$(PY) benchmarks/continual_bar.py --root $(BENCH_RUNS)/continual

bench-connect: $(BENCH_MLPS)
	for p in "0 1" "0 2" "1 2"; do set -- $$p; \
	  $(VENV)/bin/weightgeo connect $(BENCH_RUNS)/mlp_s$$1 $(BENCH_RUNS)/mlp_s$$2 --out $(BENCH_RUNS)/connect_$$1_$$2 --overwrite; done
	$(PY) benchmarks/connect_pairs.py $(BENCH_RUNS)/connect_0_1 $(BENCH_RUNS)/connect_0_2 $(BENCH_RUNS)/connect_1_2

# Mutation testing, not part of `test` or CI (see TESTING.md): a sample of generated mutants per
# module plus the hand-written ones of tools/mutations.toml, each in a private copy of the tree;
# roughly 20-40 minutes on 2 cores (an estimate). MUTATION_ARGS="--all": every mutant (hours).
MUTATION_ARGS ?= --per-module 6
mutation: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) tools/mutation.py --workers 2 $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) demo-run .pytest_cache
