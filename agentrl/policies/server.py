"""``agentrl serve``: an OpenAI-compatible HTTP server over the ``hf`` policy.

Endpoints (the subset of OpenAI's and vLLM's API the ``openai`` policy uses):
``GET /v1/models``; ``POST /v1/chat/completions`` (messages, model, temperature, top_p,
max_tokens, n, seed, stop, logprobs/top_logprobs, stream/stream_options), which also returns the token ids the way
vLLM's ``return_token_ids`` does (``prompt_token_ids`` at the top level, ``choices[i].token_ids``)
so a trainer can recompute log-probs from ids; ``POST /v1/load_lora_adapter {lora_name,
lora_path}`` and ``POST /v1/unload_lora_adapter {lora_name}`` (a loaded adapter is addressed as
``model=<lora_name>``, the served model name addresses the base model); ``POST /tokenize``
(vLLM's: the prompt ids of a chat).

Concurrent requests with the same model and sampling settings are micro-batched into one
``HFPolicy.generate_from_ids`` call: a request waits at most ``batch_wait_s`` for company, and a
batch holds up to ``max_batch_size`` sequences. A request with a ``seed`` is never batched with
another, so its answer depends only on itself. All model work (generation, adapter loading) runs
on one worker thread, in arrival order. Log-probs are those of the ``hf`` policy: of the sampled
token at the sampling temperature (the model's own distribution at temperature 0 or 1).

``stream=true`` answers with OpenAI's server-sent events as the tokens are sampled: a first chunk
per choice with the assistant role (the first also carries ``prompt_token_ids``), chunks with text
deltas, then per choice a chunk with ``finish_reason`` (and ``logprobs`` and ``token_ids`` of the
whole choice, known only at the end), a last chunk with ``usage`` when ``stream_options.include_usage``
asks for it, and ``data: [DONE]``. The deltas join to the text a non-streamed request returns; text
that might still turn into a stop string is held back until it cannot. A streamed request is never
batched with another.

Bad requests get OpenAI-style error JSON (``{"error": {"message", "type", "param", "code"}}``) and
a 4xx status; the server stays up. It binds 127.0.0.1 unless told otherwise; with ``api_key``
every ``/v1`` call needs ``Authorization: Bearer <key>``.

(No ``from __future__ import annotations`` here: FastAPI and pydantic read annotations at run time.)
"""

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentrl.policies.base import MAX_TOP_LOGPROBS, Generation, SamplingParams
from agentrl.serving import BodyError, ServerThread, check_bearer, read_json_body, warn_if_open

__all__ = ["DEFAULT_MAX_BODY_BYTES", "APIError", "Engine", "PolicyServer", "create_app", "serve"]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_N = 64
log = logging.getLogger(__name__)


class APIError(Exception):
    """A request the server refuses, answered as OpenAI error JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------- requests
class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Request):
    """One chat message; fields besides role and content (name, tool_calls, ...) reach the chat template as sent."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The message for the chat template, OpenAI's list-of-parts content joined (text parts only)."""
        content = self.content
        if isinstance(content, list):
            for i, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(
                        400,
                        f"content part {i} is not a text part ({{'type': 'text', 'text': ...}}); only text is supported",
                        param="messages",
                    )
            content = "".join(part["text"] for part in content)
        return {**(self.model_extra or {}), "role": self.role, "content": content}


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # the range torch.manual_seed takes
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else list(v or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops


class TokenizeRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    add_generation_prompt: bool = True


class LoadAdapterRequest(_Request):
    lora_name: str = Field(min_length=1, max_length=256)
    lora_path: str = Field(min_length=1)


class UnloadAdapterRequest(_Request):
    lora_name: str = Field(min_length=1, max_length=256)


def _validation_error(e: ValidationError) -> APIError:
    first = e.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    message = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()[:5]
    )
    return APIError(400, message, param=param)


# ---------------------------------------------------------------------------------------------- the model
class Engine:
    """The ``hf`` policy plus named LoRA adapters; every method runs on the server's one model thread.

    Adapters are loaded into the base model with transformers' peft integration; a request for
    the base model runs with the adapters disabled.
    """

    def __init__(self, policy: Any, served_model_name: str, model_path: str = "") -> None:
        if policy.has_adapter:
            raise ValueError(
                "serve a base model and load adapters by name (adapter=/load_lora_adapter), not a policy with a LoRA built in"
            )
        self.policy = policy
        self.name = served_model_name
        self.model_path = model_path
        self.adapters: dict[str, str] = {}  # name -> path
        self.created = int(time.time())

    def check_model(self, name: str | None) -> str | None:
        """The adapter a request's ``model`` names (None: the base model); 404 for an unknown name."""
        if name is None or name == self.name:
            return None
        if name in self.adapters:
            return name
        known = ", ".join([self.name, *self.adapters])
        raise APIError(
            404,
            f"The model `{name}` does not exist. Served models: {known}",
            param="model",
            code="model_not_found",
        )

    def _activate(self, adapter: str | None) -> None:
        model = self.policy.model
        if not self.adapters:
            return
        if adapter is None:
            model.disable_adapters()
        else:
            model.enable_adapters()
            model.set_adapter(adapter)

    def prompt_ids(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        from agentrl.agents.prompts import render_chat

        pol = self.policy
        text = render_chat(
            pol.tokenizer,
            messages,
            add_generation_prompt=add_generation_prompt,
            chat_template=pol.chat_template,
        )
        return list(pol.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, adapter: str | None, prompt_ids: list[list[int]], params: SamplingParams, streamer: Any = None
    ) -> list[Generation]:
        if adapter is not None and adapter not in self.adapters:  # unloaded while the request waited
            raise APIError(
                404,
                f"The model `{adapter}` does not exist any more (its adapter was unloaded)",
                param="model",
                code="model_not_found",
            )
        self._activate(adapter)
        if streamer is not None:
            return self.policy.generate_from_ids(prompt_ids, params, streamer=streamer)
        return self.policy.generate_from_ids(prompt_ids, params)

    def top_logprobs(
        self, adapter: str | None, gens: list[Generation], k: int, temperature: float
    ) -> list[list[list[tuple[int, float]]]]:
        """Per choice, per response token: the ``k`` most likely (id, log-prob) at that position."""
        import torch

        from agentrl.policies.logprobs import pack_samples, position_ids_from_mask, split_causal_lm

        self._activate(adapter)
        pol = self.policy
        out: list[list[list[tuple[int, float]]]] = []
        with torch.no_grad():
            for g in gens:
                if not g.response_ids:
                    out.append([])
                    continue
                batch = pack_samples([g.prompt_ids], [g.response_ids], pol.pad_token_id, pol.device)
                body, head, _ = split_causal_lm(pol.model)
                hidden = body(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=position_ids_from_mask(batch.attention_mask),
                    use_cache=False,
                ).last_hidden_state
                hidden_R = hidden[0, len(g.prompt_ids) - 1 : -1]
                rows: list[list[tuple[int, float]]] = []
                for s in range(0, hidden_R.shape[0], pol.logprob_chunk_size):
                    logits = head(hidden_R[s : s + pol.logprob_chunk_size]).float() / temperature
                    values, ids = torch.log_softmax(logits, dim=-1).topk(k, dim=-1)
                    rows.extend(list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist()))
                out.append(rows)
        return out

    def load_adapter(self, name: str, path: str) -> None:
        if name == self.name:
            raise APIError(
                400, f"lora_name {name!r} is the base model's name; choose another", param="lora_name"
            )
        if name in self.adapters:
            raise APIError(
                400, f"The lora adapter '{name}' has already been loaded. Unload it first.", param="lora_name"
            )
        directory = Path(path)
        if not (directory / "adapter_config.json").is_file():
            raise APIError(
                400, f"lora_path {path!r} holds no adapter (no adapter_config.json)", param="lora_path"
            )
        try:
            self.policy.model.load_adapter(os.fspath(directory), adapter_name=name)
        except Exception as e:  # a broken or mismatched adapter is the caller's problem, not the server's
            if name in getattr(self.policy.model, "peft_config", {}):
                self.policy.model.delete_adapter(name)
            raise APIError(
                400, f"could not load the adapter in {path!r}: {type(e).__name__}: {e}", param="lora_path"
            ) from None
        self.policy.model.eval()
        self.adapters[name] = os.fspath(directory)

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise APIError(
                404, f"The lora adapter '{name}' cannot be found.", param="lora_name", code="lora_not_found"
            )
        self._activate(name)
        self.policy.model.delete_adapter(name)
        del self.adapters[name]

    def model_cards(self) -> list[dict[str, Any]]:
        base = {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "agentrl",
            "root": self.model_path,
            "parent": None,
        }
        return [base] + [
            {
                "id": n,
                "object": "model",
                "created": self.created,
                "owned_by": "agentrl",
                "root": p,
                "parent": self.name,
            }
            for n, p in self.adapters.items()
        ]


# ---------------------------------------------------------------------------------------------- batching
@dataclass
class _Job:
    key: tuple[Any, ...]
    adapter: str | None
    prompt_ids: list[list[int]]
    params: SamplingParams
    future: "asyncio.Future[list[Generation]]"
    streamer: Any = None


class Batcher:
    """Collects concurrent generation jobs and runs those that can share a call as one batch."""

    def __init__(self, engine: Engine, max_batch_size: int = 32, batch_wait_s: float = 0.005) -> None:
        self.engine, self.max_batch_size, self.batch_wait_s = engine, max_batch_size, batch_wait_s
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="agentrl-model")
        self.batch_sizes: list[int] = []  # sequences per generate call, for tests and logs
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def run_on_model(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread (serialised with generation)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def generate(
        self, adapter: str | None, prompt_ids: list[int], n: int, params: SamplingParams, streamer: Any = None
    ) -> list[Generation]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work())
        # a seeded request only ever runs alone (greedy decoding ignores the seed), and so does a streamed one
        seeded = params.seed is not None and params.temperature > 0
        alone = secrets.token_hex(8) if seeded or streamer is not None else None
        key = (adapter, params.temperature, params.top_p, params.max_new_tokens, params.stop, alone)
        job = _Job(
            key, adapter, [list(prompt_ids)] * n, params, asyncio.get_running_loop().create_future(), streamer
        )
        await self._queue.put(job)
        return await job.future

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            deadline = loop.time() + self.batch_wait_s
            while sum(len(j.prompt_ids) for j in jobs) < self.max_batch_size:
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), max(deadline - loop.time(), 0)))
                except TimeoutError:
                    break
            groups: dict[tuple[Any, ...], list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                await self._run_group(group)

    async def _run_group(self, group: list[_Job]) -> None:
        live = [
            j for j in group if not j.future.done()
        ]  # a request cancelled while it waited (shutdown) is skipped
        if not live:
            return
        prompts = [p for j in live for p in j.prompt_ids]
        try:
            gens = await self.run_on_model(
                self.engine.generate, live[0].adapter, prompts, live[0].params, live[0].streamer
            )
        except Exception as e:
            for j in live:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.batch_sizes.append(len(prompts))
        start = 0
        for j in live:
            if not j.future.done():
                j.future.set_result(gens[start : start + len(j.prompt_ids)])
            start += len(j.prompt_ids)


# ---------------------------------------------------------------------------------------------- responses
def _byte_level_table() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character for each byte (GPT-2's convention), inverted."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_OF_CHAR = _byte_level_table()


def _token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    """OpenAI's per-token entry; ``bytes`` are the token's own bytes even when it splits a character."""
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if (
        isinstance(piece, str)
        and piece
        and all(c in _BYTE_OF_CHAR for c in piece)
        and tokenizer.convert_tokens_to_string([piece]) != piece
    ):
        raw = [_BYTE_OF_CHAR[c] for c in piece]
    else:
        raw = list(text.encode("utf-8"))
    return {"token": text, "logprob": logprob, "bytes": raw}


def _strip_stop(text: str, stops: tuple[str, ...]) -> str:
    """OpenAI's text ends before the first stop string (the ids keep every generated token)."""
    cuts = [text.find(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text


def _choice(
    tokenizer: Any,
    index: int,
    gen: Generation,
    req: ChatCompletionRequest,
    params: SamplingParams,
    top: list[list[tuple[int, float]]] | None,
) -> dict[str, Any]:
    text = gen.text if req.include_stop_str_in_output else _strip_stop(gen.text, params.stop)
    logprobs = None
    if req.logprobs:
        content = []
        for t, (tid, lp) in enumerate(zip(gen.response_ids, gen.logprobs)):
            entry = _token_entry(tokenizer, tid, lp)
            entry["top_logprobs"] = (
                [_token_entry(tokenizer, i, v) for i, v in top[t]] if top is not None else []
            )
            content.append(entry)
        logprobs = {"content": content}
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": logprobs,
        "finish_reason": gen.finish_reason,
        "token_ids": gen.response_ids,
    }


class _DeltaStreamer:
    """A transformers streamer on the model thread: each step's tokens become text deltas on the event loop.

    Events put on ``queue``: ``("start",)`` once the prompt is accepted, then ``("delta", choice, text)``.
    Text is decoded from each choice's ids so far (on the model thread, where the tokenizer lives);
    what could still become a stop string, or is half a character, is held back until it cannot.
    """

    def __init__(self, engine: Engine, n: int, stops: tuple[str, ...], keep_stop: bool, queue: Any) -> None:
        self.tokenizer, self.eos = engine.policy.tokenizer, set(engine.policy.eos_token_ids)
        self.stops, self.keep_stop = stops, keep_stop
        self.hold = max((len(x) for x in stops), default=1) - 1
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.sent = [""] * n
        self.finished = [False] * n
        self.rows: range = range(0)
        self.next_row = 0
        self.loop, self.queue = asyncio.get_running_loop(), queue

    def _emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def put(self, value: Any) -> None:
        if value.dim() == 2:  # a batch's prompts: the rows that follow are these choices
            if self.next_row == 0:
                self._emit("start")
            self.rows = range(self.next_row, self.next_row + value.shape[0])
            self.next_row += value.shape[0]
            return
        for row, token in zip(self.rows, value.tolist()):
            if self.finished[row]:
                continue
            self.ids[row].append(token)
            self.finished[row] = token in self.eos
            text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
            if not self.keep_stop:
                text = _strip_stop(text, self.stops)
            safe = text[: len(text) - self.hold] if self.hold and not self.finished[row] else text
            safe = safe.rstrip("\ufffd")
            if len(safe) > len(self.sent[row]) and safe.startswith(self.sent[row]):
                self._emit("delta", row, safe[len(self.sent[row]) :])
                self.sent[row] = safe

    def end(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- the app
def create_app(
    policy: Any,
    served_model_name: str,
    *,
    model_path: str = "",
    api_key: str | None = None,
    max_batch_size: int = 32,
    batch_wait_s: float = 0.005,
    default_max_tokens: int = 256,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Any:
    """The FastAPI app serving ``policy`` (an ``HFPolicy`` without an adapter) as ``served_model_name``.

    ``app.state.engine`` holds the model and adapters, ``app.state.batcher.batch_sizes`` the size
    of every generate call made.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if max_batch_size < 1 or default_max_tokens < 1 or max_body_bytes < 1:
        raise ValueError("max_batch_size, default_max_tokens and max_body_bytes must be >= 1")
    engine = Engine(policy, served_model_name, model_path)
    policy.max_batch_size = max_batch_size
    batcher = Batcher(engine, max_batch_size=max_batch_size, batch_wait_s=batch_wait_s)
    app = FastAPI(title="agentrl serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.batcher = engine, batcher

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        err = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    def require_key(request: Request) -> None:
        reason = check_bearer(request, api_key)
        if reason is not None:
            raise APIError(401, f"Incorrect API key provided ({reason})", code="invalid_api_key")

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        """The body as ``model`` after the key check; 401, 413 or 400 with the reason otherwise."""
        require_key(request)
        try:
            body = await read_json_body(request, max_body_bytes)
        except BodyError as e:
            raise APIError(e.status, e.message) from None
        if not isinstance(body, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
        try:
            return model.model_validate(body)
        except ValidationError as e:
            raise _validation_error(e) from None

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        require_key(request)
        return {"object": "list", "data": engine.model_cards()}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        req = await parse(request, TokenizeRequest)
        engine.check_model(req.model)
        messages = [m.as_dict() for m in req.messages]
        try:
            ids = await batcher.run_on_model(engine.prompt_ids, messages, req.add_generation_prompt)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        limit = getattr(policy.model.config, "max_position_embeddings", None)
        return {"tokens": ids, "count": len(ids), "max_model_len": limit}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = await parse(request, ChatCompletionRequest)
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options needs stream=true", param="stream_options")
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        adapter = engine.check_model(req.model)
        max_tokens = req.max_completion_tokens or req.max_tokens or default_max_tokens
        try:
            params = SamplingParams(
                temperature=req.temperature,
                top_p=req.top_p,
                max_new_tokens=max_tokens,
                seed=req.seed,
                stop=tuple(req.stop or ()),
            )
        except ValueError as e:
            raise APIError(400, str(e)) from None
        messages = [m.as_dict() for m in req.messages]
        if req.stream:
            return await stream(req, adapter, params, messages)
        try:
            prompt_ids = await batcher.run_on_model(engine.prompt_ids, messages)
            gens = await batcher.generate(adapter, prompt_ids, req.n, params)
        except (ValueError, TypeError) as e:  # e.g. a prompt longer than the model's context
            raise APIError(400, str(e), param="messages") from None
        top = None
        if req.logprobs and req.top_logprobs:
            top = await batcher.run_on_model(
                engine.top_logprobs, adapter, gens, req.top_logprobs, req.temperature or 1.0
            )
        completion_tokens = sum(len(g.response_ids) for g in gens)

        def choices() -> list[dict[str, Any]]:
            return [
                _choice(policy.tokenizer, i, g, req, params, top[i] if top else None)
                for i, g in enumerate(gens)
            ]

        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model or engine.name,
            "choices": await batcher.run_on_model(
                choices
            ),  # the tokenizer is only ever used on the model thread
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt_ids) + completion_tokens,
            },
            "prompt_token_ids": prompt_ids,
        }

    async def stream(
        req: ChatCompletionRequest,
        adapter: str | None,
        params: SamplingParams,
        messages: list[dict[str, Any]],
    ) -> Any:
        """The streamed answer: errors before the first token are 400s as usual, later ones an SSE error event."""
        from fastapi.responses import StreamingResponse

        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        try:
            prompt_ids = await batcher.run_on_model(engine.prompt_ids, messages)
        except (ValueError, TypeError) as e:
            raise APIError(400, str(e), param="messages") from None
        streamer = _DeltaStreamer(engine, req.n, params.stop, req.include_stop_str_in_output, queue)
        task = asyncio.ensure_future(batcher.generate(adapter, prompt_ids, req.n, params, streamer))
        started = asyncio.ensure_future(queue.get())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            started.cancel()
            try:
                task.result()
            except (ValueError, TypeError) as e:  # e.g. a prompt longer than the model's context
                raise APIError(400, str(e), param="messages") from None
        usage_asked = req.stream_options is not None and req.stream_options.include_usage
        head = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": req.model or engine.name,
        }

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {**head, "choices": choices, **extra}
            if usage_asked:
                body.setdefault("usage", None)
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def delta(index: int, content: str) -> dict[str, Any]:
            return {"index": index, "delta": {"content": content}, "logprobs": None, "finish_reason": None}

        async def events() -> AsyncIterator[str]:
            first = [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                for i in range(req.n)
            ]
            yield event(first, prompt_token_ids=prompt_ids)

            def pending(events: list[tuple[Any, ...]]) -> list[str]:
                """Chunks for the deltas waiting in the queue, one per choice (a slow reader gets fewer, longer ones)."""
                while not queue.empty():
                    events.append(queue.get_nowait())
                joined: dict[int, str] = {}
                for kind, *rest in events:
                    if kind == "delta":
                        joined[rest[0]] = joined.get(rest[0], "") + rest[1]
                return [event([delta(i, text)]) for i, text in sorted(joined.items())]

            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                for chunk in pending([getter.result()]):
                    yield chunk
            for chunk in pending([]):
                yield chunk
            try:
                gens = task.result()
                top = None
                if req.logprobs and req.top_logprobs:
                    top = await batcher.run_on_model(
                        engine.top_logprobs, adapter, gens, req.top_logprobs, req.temperature or 1.0
                    )
                choices = await batcher.run_on_model(
                    lambda: [
                        _choice(policy.tokenizer, i, g, req, params, top[i] if top else None)
                        for i, g in enumerate(gens)
                    ]
                )
            except Exception as e:
                log.exception("streamed generation failed")
                error = APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")
                yield f"data: {json.dumps(error.body())}\n\n"
                return
            for i, choice in enumerate(choices):
                text, sent = choice["message"]["content"], streamer.sent[i]
                if len(text) > len(sent) and text.startswith(sent):
                    yield event([delta(i, text[len(sent) :])])
                last = {
                    "index": i,
                    "delta": {},
                    "logprobs": choice["logprobs"],
                    "finish_reason": choice["finish_reason"],
                    "token_ids": choice["token_ids"],
                }
                yield event([last])
            if usage_asked:
                completion_tokens = sum(len(g.response_ids) for g in gens)
                usage = {
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": completion_tokens,
                    "total_tokens": len(prompt_ids) + completion_tokens,
                }
                yield event([], usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Any:
        req = await parse(request, LoadAdapterRequest)
        await batcher.run_on_model(engine.load_adapter, req.lora_name, req.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Any:
        req = await parse(request, UnloadAdapterRequest)
        await batcher.run_on_model(engine.unload_adapter, req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app


def _adapter_spec(adapter: str | os.PathLike[str]) -> tuple[str, str]:
    """``name=path`` (vLLM's ``--lora-modules`` form) or a path (named after its directory)."""
    text = os.fspath(adapter)
    name, sep, path = text.partition("=")
    if sep and name and not Path(text).exists():
        return name, path
    return Path(text).resolve().name, text


def build_app(
    model_path: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    served_model_name: str | None = None,
    max_batch_size: int = 32,
    api_key: str | None = None,
    device: str | None = None,
    **app_kwargs: Any,
) -> Any:
    """Load the model at ``model_path`` (and ``adapter``, as ``name=path`` or a path) and build the app."""
    from agentrl.policies.hf import HFPolicy

    # adapters come and go by name here, so sampling runs on the peft model itself, not a merged copy
    policy = HFPolicy.from_pretrained(
        model_path, device=device, max_batch_size=max_batch_size, merge_for_sampling=False
    )
    name = served_model_name or os.fspath(model_path)
    app = create_app(
        policy,
        name,
        model_path=os.fspath(model_path),
        api_key=api_key,
        max_batch_size=max_batch_size,
        **app_kwargs,
    )
    if adapter is not None:
        lora_name, lora_path = _adapter_spec(adapter)
        try:
            app.state.engine.load_adapter(lora_name, lora_path)
        except APIError as e:
            raise ValueError(e.message) from None
    return app


def serve(
    model_path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    adapter: str | os.PathLike[str] | None = None,
    served_model_name: str | None = None,
    max_batch_size: int = 32,
    api_key: str | None = None,
    device: str | None = None,
) -> None:
    """Serve the model at ``model_path`` until interrupted (blocking). The model is named
    ``served_model_name`` (default: ``model_path``) in requests; ``adapter`` (``name=path`` or a
    path) is loaded at start."""
    warn_if_open("the model", host, api_key)
    app = build_app(
        model_path,
        adapter=adapter,
        served_model_name=served_model_name,
        max_batch_size=max_batch_size,
        api_key=api_key,
        device=device,
    )
    ServerThread(app, host, port).serve_forever()


class PolicyServer:
    """``agentrl serve`` on a free 127.0.0.1 port in a daemon thread (tests, notebooks).

    ``with PolicyServer(model_path) as server: OpenAIPolicy(server.url, server.model_name)``;
    ``server.app.state`` exposes the engine and batcher.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, port: int | None = None, **kwargs: Any) -> None:
        self.app = build_app(model_path, **kwargs)
        self.model_name: str = self.app.state.engine.name
        self._thread = ServerThread(self.app, port=port)

    @property
    def url(self) -> str:
        return self._thread.url

    @property
    def port(self) -> int:
        return self._thread.port

    def start(self) -> "PolicyServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()
        self.app.state.batcher.executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
