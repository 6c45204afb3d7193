"""``hf``: a transformers causal LM with a peft LoRA adapter, in-process, on CPU or GPU.

Sampling is batched with left padding. The reference policy for KL is the same model with the
adapter switched off (``adapter_disabled``), so no second copy of the weights is held. Sampling
log-probs are taken during decoding, one value per row and step (``_ChosenLogprobs``), rather than
from ``generate``'s own scores (which would hold B x L x V float32 logits) or from a second forward
pass. With an adapter, sampling runs on a
LoRA-merged copy of the model (``merged.MergedCopy``; ``merge_for_sampling=False`` saves its
memory). The learner re-scores samples with the trained model itself, so these log-probs are what
the sampler saw, not the training ratio's denominator.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch

from agentrl.agents.prompts import render_chat
from agentrl.policies.base import Generation, Messages, SamplingParams, check_prompts
from agentrl.policies.choice import pick, score_candidates
from agentrl.policies.logprobs import TokenLogprobs, token_logprobs
from agentrl.policies.lora import LoraSettings
from agentrl.policies.precision import autocast_for, enable_tf32, resolve_dtype

__all__ = ["HFPolicy", "LoraSettings", "pick_device"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` or, when None, the first GPU if there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def stop_candidates(tokenizer: Any, stop: Sequence[str], vocab_size: int) -> torch.Tensor | None:
    """bool[vocab]: the tokens that can complete a stop string (their text holds its last character).

    A stop string first appears in the response text at the step whose token holds its last
    character, so only rows whose newest token is such a candidate need decoding. None (check every
    row) where one token's text alone does not tell: a stop string ending in whitespace or a
    non-ASCII character (tokenizers strip spaces and split multi-byte characters across tokens).
    """
    last = {s[-1] for s in stop if s}
    if not last or any(not c.isascii() or c.isspace() for c in last):
        return None
    known = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(known)], skip_special_tokens=True)
    mask = torch.ones(vocab_size, dtype=torch.bool)  # ids the tokenizer does not know: always checked
    mask[:known] = torch.tensor([any(c in t for c in last) for t in texts], dtype=torch.bool)
    return mask


class _StopOnText:
    """Stops a row once its response text (never the prompt) contains a stop string.

    transformers' own ``stop_strings`` also match across the prompt/response boundary, which
    OpenAI-style stop semantics do not. Only the last few tokens are decoded, and only for rows
    whose newest token is a stop candidate (``stop_candidates``, looked up on the device): the
    host sees one small index tensor per step (``generate`` itself syncs every step to learn
    whether all rows are done) and decodes a handful of rows, not the whole batch.
    """

    def __init__(
        self, tokenizer: Any, stop: Sequence[str], prompt_width: int, candidates: torch.Tensor | None = None
    ) -> None:
        self.tokenizer, self.stop, self.prompt_width = tokenizer, tuple(stop), prompt_width
        self.tail = 4 * max(len(s) for s in stop) + 4  # a character is at most 4 byte-level tokens
        self.candidates = candidates

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if input_ids.shape[1] <= self.prompt_width:
            return cast(torch.BoolTensor, done)
        if self.candidates is None:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        else:
            if self.candidates.device != input_ids.device:
                self.candidates = self.candidates.to(input_ids.device)
            last = input_ids[:, -1].clamp(0, self.candidates.shape[0] - 1)
            rows = self.candidates[last].nonzero().squeeze(1)
        picked = rows.tolist()
        if not picked:
            return cast(torch.BoolTensor, done)
        tails = input_ids[rows, max(self.prompt_width, input_ids.shape[1] - self.tail) :].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        hit = [r for r, t in zip(picked, texts) if any(s in t for s in self.stop)]
        if hit:
            done[hit] = True
        return cast(torch.BoolTensor, done)


class _ChosenLogprobs:
    """A logits processor that keeps ``log_softmax(logits / T)`` of each sampled token (and, with
    ``top_k``, the k largest values of that row).

    It runs before the sampling warpers, so it sees the model's logits; the token chosen at step
    k is the last input id at step k + 1 (and the last generated id after the final step), so only
    one B x V row of log-probs is alive at a time.
    """

    def __init__(self, temperature: float, top_k: int = 0) -> None:
        self.temperature, self.top_k = temperature, top_k
        self.previous: torch.Tensor | None = None
        self.chosen: list[torch.Tensor] = []
        self.tops: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        if self.top_k:
            self.tops.append(self.previous.topk(min(self.top_k, self.previous.shape[-1]), dim=-1).values)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.chosen.append(self.previous.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, sequences: torch.Tensor) -> list[list[float]]:
        """Per row, the log-prob of every generated token (``sequences``: prompt + generated ids)."""
        self._take(sequences[:, -1])
        self.previous = None
        if not self.chosen:
            return [[] for _ in range(sequences.shape[0])]
        return torch.stack(self.chosen, dim=1).tolist()

    def top(self, rows: int) -> list[list[list[float]]] | None:
        """Per row and generated token, the ``top_k`` largest log-probs (None without ``top_k``)."""
        if not self.top_k:
            return None
        if not self.tops:
            return [[] for _ in range(rows)]
        return torch.stack(self.tops, dim=1).tolist()


class HFPolicy:
    """A causal LM (+ optional LoRA) that samples chat responses and scores token ids.

    Build it with ``from_pretrained(path, lora=...)`` from any local model directory (or hub id,
    where the hub is reachable). ``model`` is the peft model when LoRA is on.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        chat_template: str | None = None,
        max_batch_size: int = 64,
        logprob_chunk_size: int = 512,
        merge_for_sampling: bool = True,
        packed_scoring: bool = False,
    ) -> None:
        if max_batch_size < 1 or logprob_chunk_size < 1:
            raise ValueError(
                f"max_batch_size and logprob_chunk_size must be >= 1, got {max_batch_size} and {logprob_chunk_size}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_batch_size = max_batch_size
        self.logprob_chunk_size = logprob_chunk_size
        self.merge_for_sampling = merge_for_sampling
        self.packed_scoring = packed_scoring  # token_logprobs(packed=True): no compute on padding
        self._merged: Any = None
        self._stop_masks: dict[tuple[str, ...], torch.Tensor | None] = {}
        gen_cfg = getattr(model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError(
                "neither the tokenizer nor the model's generation config names an end-of-sequence token"
            )
        self.eos_token_ids = sorted(eos_ids)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(gen_cfg, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        lora: LoraSettings | Mapping[str, Any] | None = None,
        adapter: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        chat_template: str | None = None,
        max_batch_size: int = 64,
        logprob_chunk_size: int = 512,
        merge_for_sampling: bool = True,
        packed_scoring: bool = False,
        attn_implementation: str | None = None,
    ) -> HFPolicy:
        """Load a model directory; add a fresh LoRA adapter (``lora``) or load a saved one (``adapter``).

        ``dtype`` defaults to float32 on CPU and bfloat16 on GPU. ``attn_implementation`` goes to
        transformers (e.g. ``flash_attention_2``, with which ``packed_scoring`` scores rows without
        padding at varlen cost).
        """
        from transformers import AutoModelForCausalLM

        from agentrl.policies.tokenizer import load_tokenizer

        if lora is not None and adapter is not None:
            raise ValueError("pass either lora= (a new adapter) or adapter= (a saved one), not both")
        if (
            isinstance(path, (str, os.PathLike))
            and Path(path).exists()
            and not (Path(path) / "config.json").exists()
        ):
            raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
        dev = pick_device(device)
        dtype = resolve_dtype(dtype, dev)
        enable_tf32(dev)
        tokenizer = load_tokenizer(path)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
        model = model.to(dev)
        if lora is not None:
            from peft import get_peft_model

            model = get_peft_model(model, LoraSettings.coerce(lora).to_peft())
        elif adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, os.fspath(adapter), is_trainable=True).to(dev)
        model.eval()
        return cls(
            model,
            tokenizer,
            chat_template=chat_template,
            max_batch_size=max_batch_size,
            logprob_chunk_size=logprob_chunk_size,
            merge_for_sampling=merge_for_sampling,
            packed_scoring=packed_scoring,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        """Entries in the tokenizer's vocabulary (normalises entropies as ARPO does: by its log)."""
        return len(self.tokenizer.get_vocab())

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    # ------------------------------------------------------------------ prompts
    def prompt_ids(self, messages: Messages) -> list[int]:
        """Chat template with the generation prompt, tokenised without extra special tokens."""
        return self.prompts_ids([messages])[0]

    def prompts_ids(self, prompts: Sequence[Messages]) -> list[list[int]]:
        """``prompt_ids`` of each chat prompt, tokenised in one batched call (the same ids)."""
        texts = [
            render_chat(self.tokenizer, m, add_generation_prompt=True, chat_template=self.chat_template)
            for m in prompts
        ]
        return (
            [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            if texts
            else []
        )

    def left_pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of a batch, padded on the left with the pad token."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, s in enumerate(sequences):
            if len(s):
                ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
                mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        """Sample one response per chat prompt (see ``generate_from_ids``)."""
        return self.generate_from_ids(self.prompts_ids(prompts), params)

    def generate_from_ids(
        self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, streamer: Any = None
    ) -> list[Generation]:
        """Sample one response per prompt given as token ids, ``max_batch_size`` prompts at a time.

        With ``params.seed`` the call is reproducible and leaves the global RNG untouched. ``streamer``
        (a transformers ``BaseStreamer``: ``put`` gets each batch's prompt ids, then every step's new
        token per row; ``end`` after each batch) sees tokens as they are sampled, for streaming servers.
        """
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        check_prompts(prompt_ids, params, limit, f"the model's {limit} positions")
        out: list[Generation] = []
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=params.seed is not None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for s in range(0, len(prompt_ids), self.max_batch_size):
                out.extend(self._generate_batch(prompt_ids[s : s + self.max_batch_size], params, streamer))
        return out

    def _generation_config(self, params: SamplingParams) -> Any:
        from transformers import GenerationConfig

        common = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": None,
        }
        if params.temperature == 0:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(
            do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0, **common
        )

    @torch.no_grad()
    def _generate_batch(
        self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, streamer: Any = None
    ) -> list[Generation]:
        ids, mask = self.left_pad(prompt_ids)
        width = ids.shape[1]
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling or scoring the samples
        try:
            stopping = (
                [_StopOnText(self.tokenizer, params.stop, width, self._stop_candidates(params.stop))]
                if params.stop
                else None
            )
            chosen = _ChosenLogprobs(
                params.temperature if params.temperature > 0 else 1.0, params.top_logprobs
            )
            sampler = self._sampling_model()
            with autocast_for(sampler):  # sampling through the peft model (merge off): LoRA in bf16
                seqs = sampler.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=self._generation_config(params),
                    stopping_criteria=stopping,
                    logits_processor=[chosen],
                    # each process generates alone, even under FSDP: a trainer that shards the base
                    # keeps the processes' forwards in step itself (trainers.parallel.Join)
                    synced_gpus=False,
                    **({"streamer": streamer} if streamer is not None else {}),
                )
            step_logprobs = chosen.finish(seqs)
            responses = [self._cut(row[width:].tolist(), params) for row in seqs]
            lps = [row[: len(r)] for row, (r, _) in zip(step_logprobs, responses)]
            step_tops = chosen.top(len(responses))
            tops = (
                [row[: len(r)] for row, (r, _) in zip(step_tops, responses)]
                if step_tops is not None
                else [None] * len(responses)
            )
        finally:
            self.model.train(was_training)
        return [
            Generation(
                prompt_ids=list(p),
                response_ids=r,
                logprobs=lp,
                text=self.tokenizer.decode(r, skip_special_tokens=True),
                finish_reason=reason,
                top_logprobs=top,
            )
            for p, (r, reason), lp, top in zip(prompt_ids, responses, lps, tops)
        ]

    def choose(
        self, prompts: Sequence[Messages], candidates: Sequence[Sequence[str]], params: SamplingParams
    ) -> list[Generation]:
        """For each chat prompt, sample one of its candidate responses by their probabilities under
        the model (``agentrl.policies.choice``); ``info`` holds the index (``choice``), the number of
        candidates (``choices``) and the set-normalised log-prob (``choice_logprob``). With
        ``params.seed`` the call is reproducible and leaves the global RNG untouched."""
        if len(candidates) != len(prompts):
            raise ValueError(f"need one candidate list per prompt, got {len(candidates)} for {len(prompts)}")
        prompt_ids = self.prompts_ids(prompts)
        flat = [c for cands in candidates for c in cands]  # one batched tokenizer call per turn
        ids = iter(self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
        cand_ids = [[list(next(ids)) for _ in cands] for cands in candidates]
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        for i, (p, cands) in enumerate(zip(prompt_ids, cand_ids)):
            if not cands or not all(cands):
                raise ValueError(f"prompt {i}: every candidate response must be non-empty")
            if limit is not None and len(p) + max(len(c) for c in cands) > limit:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens; with its longest candidate it exceeds the model's {limit} "
                    "positions (shorten the history window)"
                )
        was_training = self.model.training
        self.model.eval()
        try:
            scores = score_candidates(
                self._sampling_model(),
                prompt_ids,
                cand_ids,
                pad_token_id=self.pad_token_id,
                temperature=params.temperature,
                max_rows=max(self.max_batch_size, max(len(c) for c in cand_ids)),
            )
        finally:
            self.model.train(was_training)
        generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)
        out = []
        for i, (p, cands) in enumerate(zip(prompt_ids, cand_ids)):
            k, set_logprob = pick(scores.sequence_logprobs(i), params.temperature, generator)
            out.append(
                Generation(
                    prompt_ids=list(p),
                    response_ids=cands[k],
                    logprobs=scores.token_logprobs[i][k],
                    text=candidates[i][k],
                    finish_reason="stop",
                    info={"choice": k, "choices": len(cands), "choice_logprob": set_logprob},
                )
            )
        return out

    def _sampling_model(self) -> Any:
        """The model generate runs: the LoRA-merged copy when there is an active adapter to merge."""
        if not (self.merge_for_sampling and self.has_adapter):
            return self.model
        if self._merged is None:
            from agentrl.policies.merged import MergedCopy

            self._merged = MergedCopy(self.model)
        return self._merged.current()

    def _stop_candidates(self, stop: Sequence[str]) -> torch.Tensor | None:
        """``stop_candidates`` for ``stop``, computed once per set of stop strings."""
        key = tuple(stop)
        if key not in self._stop_masks:
            vocab = getattr(getattr(self.model, "config", None), "vocab_size", None) or len(self.tokenizer)
            self._stop_masks[key] = stop_candidates(self.tokenizer, key, max(int(vocab), len(self.tokenizer)))
        return self._stop_masks[key]

    def _has_stop(self, ids: list[int], stop: Sequence[str]) -> bool:
        return any(s in self.tokenizer.decode(ids, skip_special_tokens=True) for s in stop)

    def _cut(
        self, generated: list[int], params: SamplingParams
    ) -> tuple[list[int], Literal["stop", "length"]]:
        """The response up to and including its end-of-turn token or stop string.

        The stop string ends at the first token i whose prefix text contains it. Only candidate
        tokens (``stop_candidates``) are tried, each by decoding a short window ending there, and
        the hit is confirmed on the prefix texts (i and i - 1 tokens): linear in the response
        length. Should a tokenizer defeat the window, the prefix-by-prefix scan decides.
        """
        eos = set(self.eos_token_ids)
        end = next((i + 1 for i, t in enumerate(generated) if t in eos), None)
        upto = generated if end is None else generated[: end - 1]
        if params.stop and self._has_stop(upto, params.stop):
            first = self._first_stop(upto, params.stop)
            return upto[: first + 1], "stop"
        if end is not None:
            return generated[:end], "stop"
        return generated, "length"

    def _first_stop(self, upto: list[int], stop: Sequence[str]) -> int:
        """Index of the token that completes the first stop string in ``upto`` (which holds one)."""
        candidates = self._stop_candidates(stop)
        window = 4 * max(len(s) for s in stop) + 4
        for i, t in enumerate(upto):
            if candidates is not None and not (t >= candidates.shape[0] or bool(candidates[t])):
                continue
            if self._has_stop(upto[max(0, i + 1 - window) : i + 1], stop):
                if self._has_stop(upto[: i + 1], stop) and not self._has_stop(upto[:i], stop):
                    return i
                break
        return next(i for i in range(len(upto)) if self._has_stop(upto[: i + 1], stop))

    def weights_changed(self) -> None:
        """Say that the adapter weights were written (an optimiser step, a load): the sampling copy
        is rebuilt before the next generate. Needed after any write a version counter does not see."""
        if self._merged is not None:
            self._merged.mark_stale()

    # ------------------------------------------------------------------ scoring
    def logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
        return_hidden: bool = False,
        chunk_size: int | None = None,
        token_stats: Sequence[str] = (),
    ) -> TokenLogprobs:
        """Chunked per-token log-probs under the current weights (adapter on), differentiable; with
        ``token_stats`` (``logprobs.TOKEN_STATS``) also those statistics of the same logits."""
        return token_logprobs(
            self.model,
            input_ids.to(self.device),
            attention_mask.to(self.device),
            response_mask.to(self.device),
            chunk_size=chunk_size or self.logprob_chunk_size,
            temperature=temperature,
            with_entropy=with_entropy,
            return_hidden=return_hidden,
            token_stats=token_stats,
            packed=self.packed_scoring,
        )

    # ------------------------------------------------------------------ adapter
    def _require_adapter(self, what: str) -> None:
        if not self.has_adapter:
            raise ValueError(f"{what} needs a LoRA adapter; build the policy with lora=... or adapter=...")

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Inside this block the model is the base model: reference log-probs without a second copy."""
        self._require_adapter("adapter_disabled()")
        with self.model.disable_adapter():
            yield

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters an optimiser should update (the LoRA weights when an adapter is on)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_adapter(self, directory: str | os.PathLike[str]) -> Path:
        """Write the adapter (weights + adapter_config.json) to ``directory``; returns it."""
        self._require_adapter("save_adapter()")
        out = Path(directory)
        self.model.save_pretrained(os.fspath(out))
        return out

    def load_adapter(self, directory: str | os.PathLike[str]) -> None:
        """Load saved adapter weights into this policy's adapter (same rank and target modules)."""
        from peft import load_peft_weights, set_peft_model_state_dict

        self._require_adapter("load_adapter()")
        config_path = Path(directory) / "adapter_config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{directory} holds no adapter (no adapter_config.json)")
        saved = json.loads(config_path.read_text())
        mine = self.model.peft_config["default"]
        for key, have in (("r", mine.r), ("target_modules", mine.target_modules)):
            want = saved.get(key)
            if key == "target_modules":
                want, have = set(want or ()), set(have or ())
            if want != have:
                raise ValueError(
                    f"adapter in {directory} has {key}={want!r}, this policy's adapter has {have!r}"
                )
        weights = load_peft_weights(os.fspath(directory), device=str(self.device))
        result = set_peft_model_state_dict(self.model, weights)
        self.weights_changed()
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise ValueError(f"adapter in {directory} has weights this model lacks: {unexpected[:5]}")

    def lora_settings(self) -> LoraSettings:
        """The settings of the current adapter (for checkpoints and logs)."""
        self._require_adapter("lora_settings()")
        cfg = self.model.peft_config["default"]
        return LoraSettings(
            r=cfg.r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=tuple(sorted(cfg.target_modules)),
        )

    def describe(self) -> dict[str, Any]:
        """Model size and adapter settings, JSON-serialisable."""
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        info: dict[str, Any] = {
            "parameters": total,
            "trainable_parameters": trainable,
            "device": str(self.device),
        }
        if self.has_adapter:
            info["lora"] = self.lora_settings().model_dump()
        return info
