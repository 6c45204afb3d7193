"""Loading a tokenizer so that it tokenises as its ``tokenizer.json`` says.

transformers 5 builds a Qwen2 model's tokenizer as ``Qwen2Tokenizer``, whose constructor sets the
normaliser to NFC whatever ``tokenizer.json`` declares (the pre-tokeniser is taken from the file).
For Qwen2.5's own files that is the same thing; for a tiny tokenizer trained here with
``lowercase`` (``agentrl.policies.tiny.train_tokenizer``) it would silently drop the lower-casing,
so the model would read text it was never trained on. ``load_tokenizer`` puts the file's normaliser
back, for that class only: other classes load the file as it is, or change it on purpose.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_REBUILDS_NORMALIZER = ("Qwen2Tokenizer",)


def load_tokenizer(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, with the normaliser ``tokenizer.json`` declares."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    file = Path(path) / "tokenizer.json"
    if type(tokenizer).__name__ in _REBUILDS_NORMALIZER and file.is_file():
        declared = _declared_normalizer(file)
        if declared is not None:
            tokenizer.backend_tokenizer.normalizer = declared
    return tokenizer


def _declared_normalizer(file: Path) -> Any:
    """The normaliser of a BPE ``tokenizer.json``, built without its vocabulary (None when it has none)."""
    from tokenizers import Tokenizer

    spec = json.loads(file.read_text(encoding="utf-8"))
    if spec.get("normalizer") is None or spec.get("model", {}).get("type") != "BPE":
        return None
    minimal = {**spec, "added_tokens": [], "model": {**spec["model"], "vocab": {}, "merges": []}}
    return Tokenizer.from_str(json.dumps(minimal)).normalizer
