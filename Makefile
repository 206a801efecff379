# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   installs rest_em (runtime only: no TensorFlow, no torch) and runs the main
#               job (the embedded default experiment, on CPU)
#   make demo-code  the same for the embedded code task (gin_configs/embedded_code.gin)
#   make test   adds the test extra (torch, transformers, seqio, ruff, ...) and runs the
#               full test suite
# Each install step leaves a stamp in .venv, so `make demo` then `make test` installs only
# the test extra on top, and editing setup.py reinstalls.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo demo-code test bench install install-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

demo: $(STAMP)
	$(PY) -m rest_em.demo

demo-code: $(STAMP)  # the embedded code task (gin_configs/embedded_code.gin), on CPU
	$(PY) -m rest_em.main --gin_file=gin_configs/embedded_code.gin --workdir=runs/demo-code

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 tests

bench: $(TEST_STAMP)  # compares against Hugging Face transformers (torch)
	$(PY) benchmarks/sampling.py

clean:
	rm -rf $(VENV) *.egg-info
