PY ?= .venv/bin/python
UV ?= .venv/bin/uv
# the interpreter .venv is made from: the lock is compiled for CPython 3.11
PYTHON ?= python3
UV_VERSION ?= 0.13.8
LOCK ?= requirements.lock
# Where the CPU torch wheel (torch==2.13.0+cpu) comes from: this machine's wheel folder when it
# has one, else PyTorch's CPU wheel index (best match across both indexes, so PyPI still serves
# everything else).
TORCH_WHEELS ?= /opt/wheels
TORCH_SOURCE ?= $(if $(wildcard $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl),--find-links $(TORCH_WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

.PHONY: install test test-fast lint format chromium lock bench demo

# A venv with uv in it; uv then installs everything else from the lock.
$(UV):
	@$(PYTHON) -c 'import sys; sys.version_info[:2] == (3, 11) or print(f"warning: requirements.lock is compiled for CPython 3.11, and $(PYTHON) is {sys.version.split()[0]}: make install PYTHON=python3.11, or make lock to re-resolve for it")'
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)

# Exactly the lock: installs what is missing, changes what differs, removes what the lock lacks
# (a no-op taking about a second when .venv already matches). Hashes are checked.
# Then bytecode for what a training run imports, written once per lock: uv installs no .pyc files,
# and where PYTHONDONTWRITEBYTECODE is set every process compiled some 3,000 modules of torch,
# transformers and peft from source again (~7 s of each run's start on 2 cores).
BYTECODE_MODULES ?= agentrl.cli agentrl.trainers.loop agentrl.eval.learning agentrl.policies.tiny \
  agentrl.policies.merged peft transformers.models.qwen2.modeling_qwen2 transformers.generation.utils
BYTECODE_STAMP = $(dir $(PY))../.agentrl-bytecode
install: $(UV)
	$(UV) pip sync -q --python $(PY) $(TORCH_SOURCE) $(LOCK)
	@[ $(BYTECODE_STAMP) -nt $(LOCK) ] || { env -u PYTHONDONTWRITEBYTECODE $(PY) -c 'import importlib, \
	  importlib.util, sys; [importlib.import_module(m) for m in sys.argv[1:] if importlib.util.find_spec(m.split(".")[0])]' \
	  $(BYTECODE_MODULES) && touch $(BYTECODE_STAMP) || echo "warning: no bytecode written; runs compile their imports at start"; }

# Re-resolve requirements.in + pyproject.toml to the newest versions their ranges allow.
# Upgrade one package only: make lock LOCK_ARGS="--upgrade-package NAME"; then make test.
LOCK_ARGS ?=
lock: $(UV)
	$(UV) pip compile -q requirements.in --python-version 3.11 --generate-hashes $(TORCH_SOURCE) \
	  --no-emit-find-links --no-emit-index-url $(LOCK_ARGS) -o $(LOCK)

# Debian's Chromium for the browser tests (never `playwright install`): apt when root, else the command.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "error: the browser tests need Chromium at /usr/bin/chromium: run 'sudo apt-get install -y chromium', then make test"; \
	    exit 1; \
	  fi; \
	fi

test: install chromium
	$(PY) -m pytest -q

# The quick loop: everything but the tests marked slow.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Formatting, lint and types, as CI checks them (config: [tool.ruff] and [tool.mypy] in pyproject.toml).
lint: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

# Rewrite the tree the way `make lint` wants it (formatting and the safe lint fixes).
format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install
	$(PY) bench/credit_speed.py

# The CPU quickstart from a fresh clone: install the lock, train the tiny model (SFT warm start
# -> GiGPO), evaluate before/after with 95% intervals, write the report.
DEMO_DIR ?= runs/demo
demo: install
	.venv/bin/agentrl train configs/quickstart.yaml --out $(DEMO_DIR)
	.venv/bin/agentrl report $(DEMO_DIR)
	@echo "report: $(DEMO_DIR)/report.html ($(DEMO_DIR)/report.md); episodes: .venv/bin/agentrl view $(DEMO_DIR)"
