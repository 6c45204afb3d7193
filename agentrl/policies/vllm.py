"""``vllm``: sampling in-process with vLLM (``vllm.LLM``) and the current LoRA adapter, on a CUDA GPU.

What was run and what was not: this module was written against vLLM's documented API (``LLM``
with ``enable_lora``, ``LLM.generate`` with token-id prompts, ``SamplingParams``, ``LoRARequest``,
``RequestOutput``) but **not run: no GPU on the build machine, and vLLM cannot be installed
there**. Its tests run the parts that need no vLLM: the error when vLLM is missing, the conversion
of a ``RequestOutput`` to our ``Generation`` (against a mock of vLLM's output objects), the sampling
settings it asks for, and the adapter-id bookkeeping (against a mock ``LLM``).

How it maps onto vLLM:

- prompts are rendered and tokenised by the model's own tokenizer exactly as the ``hf`` policy
  does, and sent as token ids (``{"prompt_token_ids": [...]}``), so ``prompt_ids`` are the ids
  vLLM saw and the ids the trainer scores;
- ``SamplingParams(temperature, top_p, max_tokens, seed, stop, logprobs=0)``: ``logprobs=0``
  returns the sampled token's log-prob only; with ``params.seed`` prompt ``i`` gets seed
  ``seed + i`` (a per-request seed, so identical prompts in a group still differ); stop strings
  stay in the response (``include_stop_str_in_output``), as in ``SamplingParams``' contract;
- log-probs: the engine is built with ``logprobs_mode="processed_logprobs"`` (an engine argument of
  recent vLLM; pass ``logprobs_mode=None`` on a version without it), i.e. after temperature and
  top-p; at ``top_p=1`` that is the ``hf`` policy's contract (log-prob at the sampling
  temperature). vLLM's default, ``raw_logprobs``, is the model's distribution at temperature 1.
  The trainer recomputes log-probs from ids, so either serves training;
- LoRA: vLLM caches adapters by their integer id, so every ``sync_adapter`` (even of the same
  directory) makes a ``LoRARequest`` with a new name and a bumped id and removes the previous one
  from the engine (``llm_engine.remove_lora``), so the next ``generate`` loads the new weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agentrl.agents.prompts import render_chat
from agentrl.policies.base import Generation, Messages, SamplingParams, check_prompts

__all__ = [
    "AdapterVersions",
    "VLLMNotInstalledError",
    "VLLMPolicy",
    "adapter_rank",
    "lora_rank_for",
    "sampling_kwargs",
    "to_generation",
]

INSTALL_HINT = "pip install 'agentrl[vllm]' on a Linux machine with a CUDA GPU"


class VLLMNotInstalledError(ImportError):
    """vLLM is not importable here."""


def _vllm_api() -> tuple[Any, Any]:
    """vLLM's ``SamplingParams`` and ``LoRARequest`` classes, imported on first use."""
    try:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise VLLMNotInstalledError(
            f"the vllm policy needs vLLM, which cannot be imported here ({e}); {INSTALL_HINT}"
        ) from e
    return VLLMSamplingParams, LoRARequest


def sampling_kwargs(params: SamplingParams, index: int, eos_token_ids: Sequence[int]) -> dict[str, Any]:
    """The ``vllm.SamplingParams`` arguments for prompt ``index`` of a call with ``params``."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "max_tokens": params.max_new_tokens,
        "logprobs": 0,
        "stop_token_ids": list(eos_token_ids),
    }
    if params.seed is not None:
        kwargs["seed"] = params.seed + index
    if params.stop:
        kwargs["stop"] = list(params.stop)
        kwargs["include_stop_str_in_output"] = True
    return kwargs


def to_generation(
    output: Any, tokenizer: Any, index: int, info: Mapping[str, Any] | None = None
) -> Generation:
    """One vLLM ``RequestOutput`` (n=1) as a ``Generation``.

    The sampled token's log-prob is read from each position's ``{token_id: Logprob}`` map (vLLM's
    list of dicts, or its ``FlatLogprobs``, which indexes to the same maps). The text is decoded
    from the response ids with the policy's tokenizer, as the ``hf`` policy does.
    """
    if not output.outputs:
        raise RuntimeError(f"prompt {index}: vLLM returned no completion")
    completion = output.outputs[0]
    reason = completion.finish_reason
    if reason not in ("stop", "length"):
        raise RuntimeError(
            f"prompt {index}: vLLM finished the request with finish_reason={reason!r} (expected stop or length)"
        )
    response_ids = [int(t) for t in completion.token_ids]
    if completion.logprobs is None:
        raise RuntimeError(f"prompt {index}: vLLM returned no log-probs; the request must set logprobs=0")
    if len(completion.logprobs) != len(response_ids):
        raise RuntimeError(
            f"prompt {index}: {len(response_ids)} response token ids but {len(completion.logprobs)} log-prob positions"
        )
    logprobs = []
    for pos, token in enumerate(response_ids):
        entry = completion.logprobs[pos]
        if token not in entry:
            raise RuntimeError(f"prompt {index}: no log-prob for the sampled token {token} at position {pos}")
        logprobs.append(float(entry[token].logprob))
    return Generation(
        prompt_ids=[int(t) for t in output.prompt_token_ids],
        response_ids=response_ids,
        logprobs=logprobs,
        text=tokenizer.decode(response_ids, skip_special_tokens=True),
        finish_reason=reason,
        info={"stop_reason": completion.stop_reason, **(info or {})},
    )


@dataclass(frozen=True)
class AdapterVersion:
    """One synced adapter: vLLM's ``LoRARequest(name, int_id, path)`` fields."""

    name: str
    int_id: int
    path: str


class AdapterVersions:
    """Hands out a fresh (name, int id) per adapter sync; vLLM reuses a cached adapter with a known id."""

    def __init__(self, prefix: str = "agentrl") -> None:
        if not prefix:
            raise ValueError("prefix must be a non-empty adapter name prefix")
        self.prefix = prefix
        self.current: AdapterVersion | None = None
        self._last_id = 0

    def bump(self, adapter_dir: str | os.PathLike[str]) -> tuple[AdapterVersion, AdapterVersion | None]:
        """The new version for ``adapter_dir`` and the one it replaces (None at the first sync)."""
        directory = Path(adapter_dir).resolve()
        if not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{adapter_dir} holds no adapter (no adapter_config.json); save it with save_pretrained first"
            )
        self._last_id += 1  # vLLM requires ids > 0
        previous = self.current
        self.current = AdapterVersion(f"{self.prefix}-v{self._last_id}", self._last_id, os.fspath(directory))
        return self.current, previous


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def lora_rank_for(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``r``."""
    return next((k for k in VLLM_LORA_RANKS if k >= r), r)


def adapter_rank(adapter_dir: str | os.PathLike[str]) -> int:
    """The rank ``r`` in a saved peft adapter's ``adapter_config.json``."""
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter (no adapter_config.json)")
    return int(json.loads(config.read_text())["r"])


class VLLMPolicy:
    """A ``vllm.LLM`` with LoRA enabled, sampling chat prompts with the current adapter (or the base model).

    Build it with ``from_pretrained(path)``. ``sync_adapter(dir)`` (or ``push_adapter(model, dir)``
    after a training step) switches sampling to a saved peft adapter.
    """

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        *,
        chat_template: str | None = None,
        eos_token_ids: Sequence[int] | None = None,
        adapter_prefix: str = "agentrl",
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        eos = set(eos_token_ids or ())
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        if not eos:
            raise ValueError("neither the tokenizer nor eos_token_ids names an end-of-sequence token")
        self.eos_token_ids = sorted(eos)
        self.adapters = AdapterVersions(adapter_prefix)
        self.lora_request: Any = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        adapter: str | os.PathLike[str] | None = None,
        max_lora_rank: int | None = None,
        gpu_memory_utilization: float = 0.5,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        chat_template: str | None = None,
        logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] | None = "processed_logprobs",
        **engine_kwargs: Any,
    ) -> VLLMPolicy:
        """Start a vLLM engine on the model directory (LoRA on, one adapter at a time).

        ``gpu_memory_utilization`` defaults to half the GPU, leaving room for the trainer's own copy
        of the model; ``max_lora_rank`` must be >= the adapter's ``r`` (default: the rank of
        ``adapter``, else 64, the recipes' rank, rounded up to a value vLLM accepts). ``engine_kwargs`` go to
        ``vllm.LLM`` (e.g. ``enforce_eager=True``, ``tensor_parallel_size=2``).
        """
        _vllm_api()
        from transformers import GenerationConfig
        from vllm import LLM

        from agentrl.policies.tokenizer import load_tokenizer

        if max_lora_rank is None:
            max_lora_rank = lora_rank_for(adapter_rank(adapter) if adapter is not None else 64)
        kwargs: dict[str, Any] = {
            "model": os.fspath(path),
            "enable_lora": True,
            "max_loras": 1,
            "max_lora_rank": max_lora_rank,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
            "seed": seed,
        }
        if logprobs_mode is not None:
            kwargs["logprobs_mode"] = logprobs_mode
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        llm = LLM(**{**kwargs, **engine_kwargs})
        tokenizer = load_tokenizer(path)
        try:
            eos = GenerationConfig.from_pretrained(path).eos_token_id
        except OSError:  # no generation_config.json: the tokenizer's eos only
            eos = None
        eos_ids = eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
        policy = cls(llm, tokenizer, chat_template=chat_template, eos_token_ids=eos_ids)
        if adapter is not None:
            policy.sync_adapter(adapter)
        return policy

    # ------------------------------------------------------------------ prompts
    def prompt_ids(self, messages: Messages) -> list[int]:
        """Chat template with the generation prompt, tokenised without extra special tokens (as ``hf``)."""
        text = render_chat(
            self.tokenizer, messages, add_generation_prompt=True, chat_template=self.chat_template
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _max_model_len(self) -> int | None:
        config = getattr(self.llm, "model_config", None) or getattr(
            getattr(self.llm, "llm_engine", None), "model_config", None
        )
        return getattr(config, "max_model_len", None)

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        """Sample one response per chat prompt (see ``generate_from_ids``)."""
        return self.generate_from_ids([self.prompt_ids(m) for m in prompts], params)

    def generate_from_ids(
        self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[Generation]:
        """Sample one response per prompt given as token ids, all in one ``LLM.generate`` call."""
        limit = self._max_model_len()
        check_prompts(prompt_ids, params, limit, f"the engine's max_model_len={limit}")
        if not prompt_ids:
            return []
        vllm_sampling_params, _ = _vllm_api()
        outputs = self.llm.generate(
            [{"prompt_token_ids": [int(t) for t in p]} for p in prompt_ids],
            [
                vllm_sampling_params(**sampling_kwargs(params, i, self.eos_token_ids))
                for i in range(len(prompt_ids))
            ],
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        if len(outputs) != len(prompt_ids):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
        adapter = {
            "adapter": self.adapters.current.name
            if self.lora_request is not None and self.adapters.current
            else None
        }
        return [to_generation(out, self.tokenizer, i, adapter) for i, out in enumerate(outputs)]

    # ------------------------------------------------------------------ adapters
    def sync_adapter(self, adapter_dir: str | os.PathLike[str]) -> AdapterVersion:
        """Sample with the peft adapter saved in ``adapter_dir`` from now on; the previous one is dropped."""
        _, lora_request_cls = _vllm_api()
        version, previous = self.adapters.bump(adapter_dir)
        self.lora_request = lora_request_cls(version.name, version.int_id, version.path)
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.int_id)
        return version

    def push_adapter(self, model: Any, adapter_dir: str | os.PathLike[str]) -> AdapterVersion:
        """Save a peft model's adapter (or an ``HFPolicy``'s) to ``adapter_dir`` and sync it."""
        if hasattr(model, "save_adapter"):
            model.save_adapter(adapter_dir)
        else:
            model.save_pretrained(os.fspath(adapter_dir))
        return self.sync_adapter(adapter_dir)

    def use_base_model(self) -> None:
        """Sample without any adapter (the reference policy)."""
        self.lora_request = None
