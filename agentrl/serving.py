"""HTTP pieces every agentrl server shares (env server, policy server, retrieval server, viewer).

``ServerThread``: uvicorn on a socket bound before it starts, so port 0 gets a free port without a
race and the port is known (``.port``, ``.url``) at once; ``start`` runs it in a daemon thread (tests,
notebooks, the browser env), ``serve_forever`` in the calling thread (the command-line servers).
``check_bearer`` and ``read_json_request``: the bearer-token check and capped JSON-body preamble of
every POST route. Servers sit above this module; it imports no other part of agentrl.

(No ``from __future__ import annotations`` here: FastAPI reads handlers' annotations at run time.)
"""

import hmac
import json
import logging
import socket
import threading
import time
from typing import Any

__all__ = [
    "LOOPBACK",
    "MAX_BODY_BYTES",
    "BodyError",
    "ServerThread",
    "check_bearer",
    "free_port",
    "read_json_body",
    "read_json_request",
    "warn_if_open",
]

MAX_BODY_BYTES = 1_000_000


class BodyError(Exception):
    """A request refused before its handler runs; ``status`` and ``message`` are the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_json_body(request: Any, limit: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body, read in chunks and refused past ``limit`` bytes (raises BodyError)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise BodyError(413, f"request body too large (limit {limit} bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyError(413, f"request body too large (limit {limit} bytes)")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BodyError(400, f"request body is not valid JSON ({e})") from None


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warn_if_open(what: str, host: str, token: str | None) -> None:
    """Log a warning when ``what`` is served beyond this machine without a token."""
    if host not in LOOPBACK and not token:
        logging.getLogger("agentrl.serving").warning(
            "serving %s on %s without a token: anyone who can reach the port can use it", what, host
        )


def check_bearer(request: Any, token: str | None) -> str | None:
    """None when the request carries the bearer token (or none is required), else the reason."""
    if token is None:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "missing or wrong bearer token"
    return None


async def read_json_request(request: Any, token: str | None, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object once the bearer token checks out: the preamble every POST route shares.

    Raises BodyError: 401 without the token, 413 past ``limit`` bytes, 400 on bad JSON, 422 for a non-object.
    """
    refused = check_bearer(request, token)
    if refused:
        raise BodyError(401, refused)
    body = await read_json_body(request, limit)
    if not isinstance(body, dict):
        raise BodyError(422, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for clients that must find no server; servers bind port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A uvicorn server for ``app`` on a socket bound before it starts: in a daemon thread (``start``,
    or ``with``) or in the calling thread (``serve_forever``).

    ``port`` 0 (or None) takes a free port; ``.port`` and ``.url`` report the bound one. The socket
    listens from ``listen``/``start`` on (before that, connections are refused: a server built but not
    started is down); connections made after that but before uvicorn's loop runs wait in the listen queue.
    ``uvicorn_options`` go to ``uvicorn.Config`` (e.g. ``log_level``, ``access_log``).
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int | None = 0, **uvicorn_options: Any
    ) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only then
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port or 0))
        except OSError as e:
            self.sock.close()
            raise OSError(e.errno, f"cannot bind {host}:{port or 0} ({e.strerror})") from None
        self._listening = False
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(
            app, **{"log_level": "warning", "access_log": False, "lifespan": "off", **uvicorn_options}
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name=f"uvicorn-{self.port}"
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def listen(self) -> None:
        """Accept connections into the listen queue from now on (``start``/``serve_forever`` do it;
        call it first to print the URL before serving without a refused first client)."""
        if not self._listening:
            self.sock.listen(128)
            self._listening = True

    def start(self, timeout: float = 20.0) -> "ServerThread":
        self.listen()
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Run the server in the calling thread until it is interrupted (Ctrl-C)."""
        try:
            self.listen()
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
