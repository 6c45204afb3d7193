"""``openai``: a policy served by any OpenAI-compatible server (``vllm serve``, SGLang, ``agentrl serve``).

Requests go out concurrently (at most ``concurrency`` at a time, async httpx) and are retried
with exponential backoff on connection errors, 429 and 5xx answers; a 4xx answer is raised at
once with the server's message. For training, every Generation needs the prompt and response
token ids: the policy asks for them the way vLLM does (``return_token_ids``, answered as
``prompt_token_ids`` and ``choices[i].token_ids``; vLLM >= 0.10.2 and ``agentrl serve`` do) and
raises a clear error when a server leaves them out. ``require_token_ids=False`` allows
sampling-only use with any endpoint: ids come back empty and ``info["sampling_only"]`` is True.

LoRA weights reach the server through its adapter endpoints (``sync_adapter``): the trainer saves
the adapter to a directory the server can read and the policy loads it under a name, then
samples with ``model=<name>``. vLLM needs ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.

Log-probs: ``agentrl serve`` returns them at the sampling temperature (as the ``hf`` policy);
vLLM by default returns the model's raw log-probs. The trainer recomputes log-probs from ids, so
either serves training.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from agentrl.policies.base import Generation, Messages, SamplingParams

__all__ = ["MissingTokenIdsError", "OpenAIPolicy", "OpenAIServerError", "ServerUnreachableError"]


class OpenAIServerError(RuntimeError):
    """The server refused a request, or could not be reached after every retry."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MissingTokenIdsError(OpenAIServerError):
    """The server's answer lacks the token ids training needs."""


class ServerUnreachableError(OpenAIServerError):
    """The last attempt found no server (refused, reset, timed out): another server may answer instead."""


def _error_message(response: Any) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body text (shortened)."""
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("message"))
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])
    except ValueError:
        pass
    return response.text[:500]


class OpenAIPolicy:
    """Chat completions from ``base_url`` (``http://host:port`` or ``.../v1``) as ``model``.

    ``tokenizer``: a tokenizer directory (or object) for ``prompt_ids``; without one the server's
    ``/tokenize`` endpoint (vLLM, ``agentrl serve``) is asked. With ``params.seed`` prompt ``i``
    is sent with seed ``seed + i``, so identical prompts (a group's first turn) still differ.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        retries: int = 3,
        timeout: float = 600.0,
        backoff_s: float = 0.5,
        tokenizer: str | os.PathLike[str] | Any | None = None,
        chat_template: str | None = None,
        require_token_ids: bool = True,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not model:
            raise ValueError("model must name a model the server serves (see GET /v1/models)")
        if concurrency < 1 or retries < 0 or timeout <= 0 or backoff_s < 0:
            raise ValueError(
                f"need concurrency >= 1, retries >= 0, timeout > 0, backoff_s >= 0; got {concurrency}, {retries}, {timeout}, {backoff_s}"
            )
        root = base_url.rstrip("/")
        self.root = root.removesuffix("/v1")
        self.model = model
        self.api_key = api_key
        self.concurrency, self.retries, self.timeout, self.backoff_s = (
            concurrency,
            retries,
            timeout,
            backoff_s,
        )
        self.chat_template = chat_template
        self.require_token_ids = require_token_ids
        self.loaded_adapters: set[str] = set()
        self.sleep: Callable[[float], Awaitable[Any]] = (
            asyncio.sleep
        )  # the backoff wait; tests swap it to see the delays
        self._tokenizer: Any = tokenizer
        if isinstance(tokenizer, (str, os.PathLike)):
            from agentrl.policies.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(tokenizer)

    # ------------------------------------------------------------------ http
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _client(self) -> Any:
        import httpx

        headers = self._headers()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(base_url=self.root, headers=headers, timeout=self.timeout, limits=limits)

    async def _post(self, client: Any, path: str, body: dict[str, Any]) -> Any:
        """POST with retries on connection errors, 429 and 5xx; the response on a 2xx."""
        import httpx

        last, unreachable = "", False
        for attempt in range(self.retries + 1):
            try:
                response = await client.post(path, json=body)
            except httpx.TransportError as e:
                last, unreachable = f"{type(e).__name__}: {e}", True
            else:
                unreachable = False
                if response.status_code < 400:
                    return response
                message = _error_message(response)
                if response.status_code != 429 and response.status_code < 500:
                    raise OpenAIServerError(
                        f"{self.root}{path} answered {response.status_code}: {message}", response.status_code
                    )
                last = f"HTTP {response.status_code}: {message}"
            if attempt < self.retries:
                await self.sleep(self.backoff_s * 2**attempt)
        error = ServerUnreachableError if unreachable else OpenAIServerError
        raise error(f"{self.root}{path} failed after {self.retries + 1} attempt(s); last error: {last}")

    def _run(self, coro: Any) -> Any:
        """Run a coroutine from sync code, also when the caller is inside an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        """One response per chat prompt, in order (see ``agenerate``)."""
        return cast(list[Generation], self._run(self.agenerate(prompts, params)))

    async def agenerate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        """Send every prompt as its own request, ``concurrency`` at a time; raise the first failure."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        gate = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:

            async def one(i: int, messages: Messages) -> Generation:
                async with gate:
                    return await self.complete(client, messages, params, i)

            results = await asyncio.gather(
                *(one(i, m) for i, m in enumerate(prompts)), return_exceptions=True
            )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return cast(list[Generation], results)

    async def complete(
        self, client: Any, messages: Messages, params: SamplingParams, index: int
    ) -> Generation:
        """One chat completion through ``client`` (from ``_client``); ``index`` offsets the seed."""
        response = await self._post(client, "/v1/chat/completions", self._payload(messages, params, index))
        try:
            body = response.json()
        except ValueError:
            text = response.text[:300]
            raise OpenAIServerError(
                f"prompt {index}: {self.root} answered with a body that is not JSON: {text!r}"
            ) from None
        return self._generation(body, index)

    def _payload(self, messages: Messages, params: SamplingParams, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "n": 1,
            "logprobs": True,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_logprobs:
            body["top_logprobs"] = params.top_logprobs
        if params.seed is not None:
            body["seed"] = params.seed + index
        if self.require_token_ids:  # vLLM's extensions; a plain OpenAI endpoint would refuse them
            body["return_token_ids"] = True
            body["include_stop_str_in_output"] = True  # SamplingParams keeps the stop string in the response
        return body

    def _generation(self, body: dict[str, Any], index: int) -> Generation:
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError):
            raise OpenAIServerError(
                f"prompt {index}: {self.root} answered without choices[0].message.content: {str(body)[:300]}"
            ) from None
        content = (choice.get("logprobs") or {}).get("content") or []
        logprobs = [float(t["logprob"]) for t in content]
        tops = (
            [
                sorted((float(x["logprob"]) for x in t.get("top_logprobs") or ()), reverse=True)
                for t in content
            ]
            if any("top_logprobs" in t for t in content)
            else None
        )
        prompt_ids, response_ids = body.get("prompt_token_ids"), choice.get("token_ids")
        reason: Literal["stop", "length"] = "length" if finish == "length" else "stop"
        if prompt_ids is None or response_ids is None:
            if self.require_token_ids:
                missing = [
                    n
                    for n, v in (("prompt_token_ids", prompt_ids), ("choices[0].token_ids", response_ids))
                    if v is None
                ]
                raise MissingTokenIdsError(
                    f"{self.root} returned no {' and no '.join(missing)}: training needs the token ids of every prompt and "
                    "response. Use a server that honours return_token_ids (vLLM >= 0.10.2, agentrl serve), or pass "
                    "require_token_ids=False for sampling only"
                )
            return Generation(
                prompt_ids=[],
                response_ids=[],
                logprobs=logprobs,
                text=text,
                finish_reason=reason,
                info={"sampling_only": True, "finish_reason": finish},
            )
        if len(logprobs) != len(response_ids):
            raise OpenAIServerError(
                f"prompt {index}: {len(response_ids)} response token ids but {len(logprobs)} log-probs from {self.root}"
            )
        return Generation(
            prompt_ids=list(prompt_ids),
            response_ids=list(response_ids),
            logprobs=logprobs,
            text=text,
            finish_reason=reason,
            info={"model": self.model},
            top_logprobs=tops,
        )

    # ------------------------------------------------------------------ prompts
    def prompt_ids(self, messages: Messages) -> list[int]:
        """The chat template's prompt ids: from the local tokenizer when given, else the server's ``/tokenize``."""
        if self._tokenizer is not None:
            from agentrl.agents.prompts import render_chat

            text = render_chat(
                self._tokenizer, messages, add_generation_prompt=True, chat_template=self.chat_template
            )
            return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

        async def ask() -> list[int]:
            async with self._client() as client:
                body = {"model": self.model, "messages": list(messages), "add_generation_prompt": True}
                response = await self._post(client, "/tokenize", body)
            return list(response.json()["tokens"])

        return cast(list[int], self._run(ask()))

    # ------------------------------------------------------------------ adapters
    def sync_adapter(self, adapter_dir: str | os.PathLike[str], name: str) -> None:
        """Load the adapter saved in ``adapter_dir`` on the server as ``name`` (replacing an older
        one of that name) and sample with ``model=name`` from now on."""
        directory = Path(adapter_dir).resolve()
        if not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{adapter_dir} holds no adapter (no adapter_config.json); save it with save_adapter first"
            )
        if not name:
            raise ValueError("name must be a non-empty adapter name")
        self._run(self._sync_adapter(os.fspath(directory), name))
        self.loaded_adapters.add(name)
        self.model = name

    def use_adapter(self, name: str) -> None:
        """Sample with ``model=name``, an adapter another client (rank 0) loaded on the server."""
        if not name:
            raise ValueError("name must be a non-empty adapter name")
        self.model = name

    async def _sync_adapter(self, path: str, name: str) -> None:
        async with self._client() as client:
            if name in self.loaded_adapters:
                await self._unload(client, name)
            try:
                await self._post(client, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
            except OpenAIServerError as e:  # loaded earlier by another client or process: replace it
                if e.status != 400 or "already" not in str(e):
                    raise
                await self._unload(client, name)
                await self._post(client, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def _unload(self, client: Any, name: str) -> None:
        try:
            await self._post(client, "/v1/unload_lora_adapter", {"lora_name": name})
        except OpenAIServerError as e:
            if e.status not in (400, 404):  # not loaded there (any more): nothing to unload
                raise

    def unload_adapter(self, name: str) -> None:
        """Remove adapter ``name`` from the server."""

        async def go() -> None:
            async with self._client() as client:
                await self._unload(client, name)

        self._run(go())
        self.loaded_adapters.discard(name)

    @classmethod
    def connect(cls, base_url: str, model: str | None = None, **kwargs: Any) -> OpenAIPolicy:
        """A policy for ``base_url``: ``model`` defaults to the first the server lists, the API key
        to ``$OPENAI_API_KEY`` or ``$AGENTRL_API_KEY``."""
        kwargs.setdefault("api_key", os.environ.get("OPENAI_API_KEY") or os.environ.get("AGENTRL_API_KEY"))
        if model is None:
            model = cls(base_url, "unnamed", api_key=kwargs["api_key"]).models()[0]
        return cls(base_url, model, **kwargs)

    def models(self) -> list[str]:
        """The model ids the server lists (``GET /v1/models``)."""
        import httpx

        try:
            response = httpx.get(f"{self.root}/v1/models", headers=self._headers(), timeout=self.timeout)
        except httpx.TransportError as e:
            raise OpenAIServerError(
                f"{self.root}/v1/models could not be reached: {type(e).__name__}: {e}"
            ) from None
        if response.status_code >= 400:
            message = _error_message(response)
            raise OpenAIServerError(
                f"{self.root}/v1/models answered {response.status_code}: {message}", response.status_code
            )
        return [m["id"] for m in response.json()["data"]]
