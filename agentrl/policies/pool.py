"""Several OpenAI-compatible servers of the same model as one policy (``rollout.server.url`` as a list).

Each prompt goes to the live server with the fewest requests in flight, at most ``concurrency`` per
server. A server that cannot be reached (refused, reset, timed out) is taken out for ``cooldown_s``
and the prompt is sent again to another server: with the same seed, model and adapter any server
gives the same answer, so no episode is lost. After the cool-down the server is probed (its model
list) and, when it answers, gets the current adapter before any request. Only when every server is
out does a request fail. ``sync_adapter`` loads the adapter on every server in parallel (threads)
and waits for all. ``take_stats`` reports requests per server and the servers that failed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from agentrl.policies.base import Generation, Messages, SamplingParams
from agentrl.policies.openai import OpenAIPolicy, OpenAIServerError, ServerUnreachableError

__all__ = ["ServerPool", "read_urls"]


def read_urls(spec: str | Sequence[str]) -> list[str]:
    """The server URLs of ``spec``: a URL, a list of URLs, or a text file with one URL per line
    (blank lines and ``#`` comments skipped). Raises ValueError naming what is wrong."""
    if isinstance(spec, str):
        if spec.startswith(("http://", "https://")):
            return [spec]
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ValueError(
                "must be an http(s) URL such as http://127.0.0.1:8000/v1, a list of them, or a file of "
                "URLs (one per line)"
            )
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        urls = [line for line in lines if line]
        if not urls:
            raise ValueError(f"the URL file {spec} names no server")
        where = f" in {spec}"
    else:
        urls, where = list(spec), ""
        if not urls:
            raise ValueError("an empty list names no server; give at least one http(s) URL")
    for u in urls:
        if not isinstance(u, str) or not u.startswith(("http://", "https://")):
            raise ValueError(
                f"every server must be an http(s) URL such as http://127.0.0.1:8000/v1; got {u!r}{where}"
            )
    roots = [u.rstrip("/").removesuffix("/v1") for u in urls]
    twice = sorted({u for u in roots if roots.count(u) > 1})
    if twice:
        raise ValueError(f"server(s) listed twice{where}: {', '.join(twice)}")
    return urls


class _Server:
    """One member: its client policy, requests in flight, and when it was taken out (None: live)."""

    def __init__(self, policy: OpenAIPolicy) -> None:
        self.policy = policy
        self.outstanding = 0
        self.down_since: float | None = None
        self.probing = False
        self.error = ""


class ServerPool:
    """Chat completions balanced over ``base_urls`` (see the module doc); the other arguments are
    ``OpenAIPolicy``'s, per server. ``retries`` is low by default: a failed request goes to another
    server instead of waiting for its own."""

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        retries: int = 1,
        timeout: float = 600.0,
        backoff_s: float = 0.5,
        cooldown_s: float = 30.0,
        tokenizer: str | os.PathLike[str] | Any | None = None,
        chat_template: str | None = None,
        require_token_ids: bool = True,
    ) -> None:
        urls = read_urls(list(base_urls))
        if cooldown_s <= 0:
            raise ValueError(f"cooldown_s must be > 0, got {cooldown_s}")
        if isinstance(tokenizer, (str, os.PathLike)):  # loaded once, shared by the members
            from agentrl.policies.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        self.servers = [
            _Server(
                OpenAIPolicy(
                    u,
                    model,
                    api_key,
                    concurrency=concurrency,
                    retries=retries,
                    timeout=timeout,
                    backoff_s=backoff_s,
                    tokenizer=tokenizer,
                    chat_template=chat_template,
                    require_token_ids=require_token_ids,
                )
            )
            for u in urls
        ]
        self.model, self.concurrency, self.cooldown_s = model, concurrency, cooldown_s
        self.adapter: tuple[str, str] | None = None  # (directory, name) every live server holds
        self.clock = time.monotonic  # tests move it to end a cool-down
        self._requests = dict.fromkeys(self.urls, 0)
        self._failed: list[str] = []

    @property
    def urls(self) -> list[str]:
        return [s.policy.root for s in self.servers]

    @property
    def live(self) -> list[str]:
        return [s.policy.root for s in self.servers if s.down_since is None]

    @classmethod
    def connect(cls, base_urls: Sequence[str], model: str | None = None, **kwargs: Any) -> ServerPool:
        """A pool for ``base_urls``: ``model`` defaults to the first the first reachable server lists,
        the API key to ``$OPENAI_API_KEY`` or ``$AGENTRL_API_KEY``."""
        kwargs.setdefault("api_key", os.environ.get("OPENAI_API_KEY") or os.environ.get("AGENTRL_API_KEY"))
        if model is None:
            errors = []
            for url in read_urls(list(base_urls)):
                try:
                    model = OpenAIPolicy(url, "unnamed", api_key=kwargs["api_key"]).models()[0]
                    break
                except OpenAIServerError as e:
                    errors.append(str(e))
            else:
                raise OpenAIServerError("no rollout server could be reached: " + "; ".join(errors))
        return cls(base_urls, model, **kwargs)

    # ------------------------------------------------------------------ health
    def _take_out(self, server: _Server, error: Exception) -> None:
        """Out for a cool-down from now (counted as a failure once, when it was live)."""
        if server.down_since is None:
            self._failed.append(server.policy.root)
        server.down_since, server.error = self.clock(), str(error)

    def _due(self, server: _Server) -> bool:
        """Out, and its cool-down is over: worth a probe."""
        return server.down_since is not None and self.clock() - server.down_since >= self.cooldown_s

    async def _revive(self, server: _Server) -> bool:
        """Probe a server after its cool-down; when it answers, load the current adapter there and
        take it back. True when it is live again."""
        try:
            async with server.policy._client() as client:
                response = await client.get("/v1/models")
            if response.status_code >= 400:
                raise OpenAIServerError(f"{server.policy.root}/v1/models answered {response.status_code}")
            if self.adapter is not None:
                await server.policy._sync_adapter(*self.adapter)
                server.policy.loaded_adapters.add(self.adapter[1])
        except Exception as e:  # still down (or broken): wait another cool-down
            server.down_since, server.error = self.clock(), f"{type(e).__name__}: {e}"
            return False
        server.policy.model, server.down_since = self.model, None
        return True

    def _all_down(self) -> OpenAIServerError:
        lines = "; ".join(f"{s.policy.root} ({s.error})" for s in self.servers)
        return OpenAIServerError(f"all {len(self.servers)} rollout servers are down: {lines}")

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        """One response per chat prompt, in order (see ``agenerate``)."""
        return cast(list[Generation], self.servers[0].policy._run(self.agenerate(prompts, params)))

    async def agenerate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        """Send every prompt as its own request to the least loaded live server; a prompt whose
        server fails goes to another. Raises the first failure that is not a lost server."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        changed = asyncio.Condition()
        clients = [s.policy._client() for s in self.servers]
        probes: set[asyncio.Task[Any]] = set()

        async def probe(server: _Server) -> None:
            try:
                await self._revive(server)
            finally:
                server.probing = False
                async with changed:
                    changed.notify_all()

        async def acquire() -> _Server:
            async with changed:
                while True:
                    for s in self.servers:
                        if self._due(s) and not s.probing:
                            s.probing = True
                            task = asyncio.get_running_loop().create_task(probe(s))
                            probes.add(task)
                            task.add_done_callback(probes.discard)
                    free = [
                        s for s in self.servers if s.down_since is None and s.outstanding < self.concurrency
                    ]
                    if free:
                        best = min(free, key=lambda s: s.outstanding)  # the first of the least loaded
                        best.outstanding += 1
                        return best
                    if all(s.down_since is not None and not s.probing for s in self.servers):
                        raise self._all_down()
                    await changed.wait()

        async def one(i: int, messages: Messages) -> Generation:
            while True:
                server = await acquire()
                k = self.servers.index(server)
                self._requests[server.policy.root] += 1
                try:
                    return await server.policy.complete(clients[k], messages, params, i)
                except ServerUnreachableError as e:
                    self._take_out(server, e)  # and send the prompt again, elsewhere
                finally:
                    server.outstanding -= 1
                    async with changed:
                        changed.notify_all()

        try:
            results = await asyncio.gather(
                *(one(i, m) for i, m in enumerate(prompts)), return_exceptions=True
            )
        finally:
            for task in list(probes):
                task.cancel()
            for s in self.servers:
                s.probing = False
            for c in clients:
                await c.aclose()
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return cast(list[Generation], results)

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The chat template's prompt ids: from the local tokenizer when given, else a live server's."""
        for s in self.servers:
            if s.down_since is not None and s.policy._tokenizer is None:
                continue
            try:
                return s.policy.prompt_ids(messages)
            except ServerUnreachableError as e:
                self._take_out(s, e)
        raise self._all_down()

    # ------------------------------------------------------------------ adapters
    def use_adapter(self, name: str) -> None:
        """Sample with ``model=name`` on every server, an adapter another client (rank 0) loaded."""
        if not name:
            raise ValueError("name must be a non-empty adapter name")
        self.model = name
        for s in self.servers:
            s.policy.model = name

    def sync_adapter(self, adapter_dir: str | os.PathLike[str], name: str) -> None:
        """Load the adapter on every live server (and every server whose cool-down is over), in
        parallel, and wait for all; a server that cannot be reached is taken out. Fails when no server
        holds the adapter afterwards, or when a server refuses it (a 4xx: the adapter itself is wrong)."""
        directory = os.fspath(Path(adapter_dir).resolve())
        targets = [s for s in self.servers if s.down_since is None or self._due(s)]
        with concurrent.futures.ThreadPoolExecutor(max(len(targets), 1)) as threads:
            futures = {threads.submit(s.policy.sync_adapter, directory, name): s for s in targets}
        for future, s in futures.items():
            error = future.exception()
            if isinstance(error, ServerUnreachableError):
                self._take_out(s, error)
            elif error is not None:
                raise error
            else:
                s.down_since = None
        self.adapter, self.model = (directory, name), name
        for s in self.servers:
            s.policy.model = name
        if not self.live:
            raise self._all_down()

    # ------------------------------------------------------------------ metrics
    def take_stats(self) -> dict[str, Any]:
        """Since the last call: requests sent per server, the servers taken out (in order), and the
        servers live now; the counters start again from zero."""
        out = {
            "server_requests": dict(self._requests),
            "server_failures": len(self._failed),
            "failed_servers": list(self._failed),
            "servers_live": len(self.live),
        }
        self._requests = dict.fromkeys(self.urls, 0)
        self._failed = []
        return out
