PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
EXTRAS ?= dev,train,webshop,report,alfworld,search,tools,ray,tracking

.PHONY: install test bench demo

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

# The CPU quickstart from a fresh clone: install what training needs, train the tiny model
# (SFT warm start -> GiGPO), evaluate before/after with 95% intervals, write the report.
DEMO_DIR ?= runs/demo
demo: .venv/bin/python
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train,report]"
	.venv/bin/agentrl train configs/quickstart.yaml --out $(DEMO_DIR)
	.venv/bin/agentrl report $(DEMO_DIR)
	@echo "report: $(DEMO_DIR)/report.html ($(DEMO_DIR)/report.md); episodes: .venv/bin/agentrl view $(DEMO_DIR)"
