PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
EXTRAS ?= dev,train,webshop,report,alfworld,search,tools,ray,tracking

.PHONY: install test bench

.venv/bin/python:
	python3 -m venv .venv

# CPU torch first, so nothing that depends on torch pulls a CUDA build; bfcl-eval pins heavy
# dependencies the parts we use do not need, hence --no-deps.
install: .venv/bin/python
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps bfcl-eval==2026.3.23

test:
	$(PY) -m pytest -q

bench:
	$(PY) bench/credit_speed.py
