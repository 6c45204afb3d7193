"""The environment is the committed lock: what `make install` promises and the suite runs on."""

import importlib.metadata as md
import re
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PINS = dict(
    re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", (ROOT / "requirements.lock").read_text(), flags=re.M)
)


def test_lock_pins_the_packages_the_project_needs():
    assert PINS["torch"] == "2.13.0+cpu"  # the CPU build: no CUDA dependencies can follow it
    for name in (
        "transformers",
        "peft",
        "pytest",
        "uv",
        "bfcl-eval",
        "alfworld",
        "fastapi",
        "wandb",
        "mcp",
        "openenv-core",
        "websockets",
    ):
        assert name in PINS, f"{name} missing from requirements.lock"
    assert not any(n.startswith("nvidia-") for n in PINS), "a CUDA package crept into the CPU lock"


def test_installed_versions_equal_the_lock():
    differ = {}
    for name, pinned in PINS.items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        if installed != pinned:
            differ[name] = (pinned, installed)
    assert not differ, (
        f"installed packages differ from requirements.lock (locked, installed): {differ}; run make install"
    )


def test_locked_transformers_accepts_the_locked_peft():
    """transformers refuses to load adapters with a peft older than its MIN_PEFT_VERSION (5.24 wants 0.22)."""
    from transformers.integrations.peft import MIN_PEFT_VERSION

    assert Version(PINS["peft"]) >= Version(MIN_PEFT_VERSION)
