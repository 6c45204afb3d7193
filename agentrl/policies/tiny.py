"""Tiny models without the hub: a byte-level BPE tokenizer trained on env text and a random-init Qwen2.

Tests and the CPU quickstart never download a model or tokenizer. ``build_tiny_model``
writes a directory that loads through ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained``
exactly like a real model, so every code path that takes a model path is exercised for real.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agentrl.agents.formats import check_whole_words

__all__ = [
    "CHATML_TEMPLATE",
    "FORMAT_TOKENS",
    "SPECIAL_TOKENS",
    "build_tiny_model",
    "env_corpus",
    "format_corpus",
    "tiny_qwen2_config",
    "train_tokenizer",
]

PAD_TOKEN = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
# The tags of every response format are single tokens: tiny models learn the format fast and
# span boundaries fall on token boundaries.
FORMAT_TOKENS = (
    "<think>",
    "</think>",
    "<action>",
    "</action>",
    "<switch>",
    "</switch>",
    "<subgoal>",
    "</subgoal>",
    "<tool_call>",
    "</tool_call>",
)

# Qwen2's normalisation (NFC) and pre-tokenisation: transformers rebuilds a Qwen2 model's tokenizer
# with these on load, so the tokenizer is trained with them and loads back unchanged.
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Words apart from the space or punctuation before them: a word is one token wherever it stands.
WORDS_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+|\s+"""
PRETOKENIZERS = {"qwen2": QWEN2_PRETOKENIZE_REGEX, "words": WORDS_PRETOKENIZE_REGEX}

# ChatML, as Qwen2.5 writes it, without tool-schema rendering: a small template for the tiny tokenizer.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def format_corpus() -> list[str]:
    """Text in every response format, so the tokenizer learns merges for the scaffolding too."""
    return [
        "<think>I should explore the rooms and find the key.</think><action>go north</action>",
        "<switch>SWITCH</switch><subgoal>find the red key</subgoal><action>take red key</action>",
        "<switch>KEEP</switch><subgoal>reach the goal</subgoal><action>go east</action>",
        '<tool_call>{"name": "search", "arguments": {"query": "weather"}}</tool_call>',
        "Task: Current observation: Admissible actions: You have taken step(s) so far. Current subgoal: None",
    ]


def env_corpus(env: Any, task_ids: Sequence[str], *, steps_per_task: int = 10, seed: int = 0) -> list[str]:
    """Observations and actions met by walking ``env`` with random admissible actions.

    The tokenizer then learns merges for the text the agent will actually read and write.
    Envs without ``admissible_actions`` contribute their observations only.
    """
    import random

    rng = random.Random(seed)
    texts: list[str] = []
    for n, task_id in enumerate(task_ids):
        obs, info = env.reset(seed=seed + n, options={"task_id": task_id})
        texts.append(obs)
        for _ in range(steps_per_task):
            actions = list(info.get("admissible_actions") or [])
            if not actions:
                break
            action = rng.choice(actions)
            obs, _, terminated, truncated, info = env.step(action)
            texts.extend([action, obs])
            if terminated or truncated:
                break
    return texts


def train_tokenizer(
    corpus_texts: Iterable[str],
    vocab_size: int = 512,
    min_frequency: int = 2,
    whole_words: Sequence[str] = (),
    pretokenize: str = "qwen2",
    lowercase: bool = False,
) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus_texts`` with ChatML specials.

    Byte-level means any text round-trips, including characters never seen in the corpus.
    ``whole_words``: strings kept as one token each, added like the format tags (``FORMAT_TOKENS``)
    within ``vocab_size``. A word the corpus holds too rarely to merge is otherwise spelt in bytes:
    HiPER's ``KEEP``, spelt ``K E E P`` in every response, stops the maze model learning which way
    to go (docs/benchmarks.md, "HiPER's warm start").

    ``pretokenize``: ``"qwen2"`` splits text as Qwen2's tokenizer does, a word taking the space or
    the one punctuation mark before it (`` black``, ``[b``...), so a word read after a space and
    written after a bracket are different tokens; ``"words"`` splits every word from what precedes
    it (spaces become tokens of their own, ~40% more tokens on WebShop's pages), so a word copied
    from the observation into ``click[...]`` is the token it was read as.
    """
    if pretokenize not in PRETOKENIZERS:
        raise ValueError(f"pretokenize must be one of {sorted(PRETOKENIZERS)}, got {pretokenize!r}")
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in corpus_texts if isinstance(t, str) and t]
    if not texts:
        raise ValueError("corpus_texts is empty: the tokenizer needs some text to learn merges from")
    check_whole_words(whole_words)
    added = list(dict.fromkeys([*FORMAT_TOKENS, *whole_words]))
    n_base = 256 + len(SPECIAL_TOKENS) + len(added)
    if vocab_size < n_base:
        raise ValueError(
            f"vocab_size must be >= {n_base} (256 bytes + special, format and whole-word tokens), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.normalizer = (
        normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()]) if lowercase else normalizers.NFC()
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZERS[pretokenize]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(added),
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )


def widen_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """A copy of a byte-level BPE tokenizer from ``train_tokenizer`` grown to exactly ``vocab_size``
    entries (e.g. Qwen2.5's 151,936), built locally: synthetic merges of byte-level characters
    (every pair, then triples), ranked after the trained merges.

    Benchmarks need the real vocabulary size (the output layer and the log-softmax over it are a
    large share of a 1.5B model's work); a BPE trained on a small corpus stops at a few hundred.
    """
    import json

    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list[Any] = data["model"]["merges"]
    have = len(tokenizer)
    if vocab_size < have:
        raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {have} entries")
    taken = set(vocab) | {t["content"] for t in data["added_tokens"]}
    next_id = 1 + max([*vocab.values(), *(t["id"] for t in data["added_tokens"])])
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pairs: list[str] = []

    def add(left: str, right: str) -> bool:
        nonlocal next_id
        if next_id >= vocab_size:
            return False
        token = left + right
        if token in taken:
            return True
        taken.add(token)
        vocab[token] = next_id
        merges.append([left, right] if merges and isinstance(merges[0], list) else f"{left} {right}")
        next_id += 1
        if len(token) == 2:
            pairs.append(token)
        return True

    full = all(add(a, b) for a in alphabet for b in alphabet)
    if full:
        for pair in list(pairs):
            if not all(add(pair, c) for c in alphabet):
                break
    if next_id != vocab_size:
        raise ValueError(f"could not grow the tokenizer to {vocab_size} entries (reached {next_id})")
    grown = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        chat_template=tokenizer.chat_template,
        clean_up_tokenization_spaces=False,
        model_max_length=tokenizer.model_max_length,
    )
    if len(grown) != vocab_size:
        raise ValueError(f"the grown tokenizer has {len(grown)} entries, not {vocab_size}")
    return grown


def tiny_qwen2_config(
    vocab_size: int,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 2048,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Any:
    """A Qwen2 config of the given size (tied embeddings keep the parameter count small)."""
    from transformers import Qwen2Config

    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden ({hidden}) must be divisible by heads ({heads}), and heads by kv_heads ({kv_heads})"
        )
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
    )


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    corpus_texts: Sequence[str],
    *,
    vocab_size: int = 512,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 2048,
    seed: int = 0,
    full_vocab: int | None = None,
    dtype: str | None = None,
    whole_words: Sequence[str] = (),
    pretokenize: str = "qwen2",
    lowercase: bool = False,
) -> Path:
    """Train a tokenizer on ``corpus_texts`` (+ ``format_corpus()``), random-init a Qwen2, save both.

    Deterministic for a given corpus, size and seed. Returns ``out_dir``, a directory that
    ``from_pretrained`` loads like any real model. ``full_vocab``: grow the trained tokenizer to
    exactly this many entries (``widen_tokenizer``; 151,936 for a Qwen2.5-shaped benchmark model).
    ``dtype`` (e.g. ``"bfloat16"``): the weights are saved in it (half the disk of a 1.5B model).
    ``whole_words``: kept as one token each; ``pretokenize``: how text is split before BPE;
    ``lowercase``: lower-case text first (``train_tokenizer``).
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out = Path(out_dir)
    tokenizer = train_tokenizer(
        [*corpus_texts, *format_corpus()],
        vocab_size=vocab_size,
        whole_words=whole_words,
        pretokenize=pretokenize,
        lowercase=lowercase,
    )
    if full_vocab is not None:
        tokenizer = widen_tokenizer(tokenizer, full_vocab)
    tokenizer.model_max_length = max_positions
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = tiny_qwen2_config(
        len(tokenizer),
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        max_positions=max_positions,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=None
    )
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
