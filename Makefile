PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install test bench

.venv/bin/python:
	python3 -m venv .venv

install: .venv/bin/python
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,train,webshop,report]"

test:
	$(PY) -m pytest -q

bench:
	$(PY) bench/credit_speed.py
