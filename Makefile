# Quick start: `make demo` then `make test` (fresh clone, only Python 3.11 needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -q

.PHONY: demo test install clean bench-quick

install: $(VENV)/.installed

# torch first, pinned: letting pip resolve a bare torch would pull a multi-GB CUDA build.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[scipion,test]"
	touch $@

demo: install
	$(PY) -m scipion_simcryo.demo --o demo_output

test: install
	$(PY) -m pytest $(PYTEST_ARGS) tests scipion_simcryo/tests

bench-quick: install
	$(PY) benchmarks/align.py --quick
	$(PY) benchmarks/classify.py --quick
	$(PY) benchmarks/denoise.py --quick

clean:
	rm -rf $(VENV) demo_output .pytest_cache
