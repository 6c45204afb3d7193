"""The shared HTTP pieces (agentrl/serving.py): one ServerThread every server uses, binding, blocking serve."""

from __future__ import annotations

import ast
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import agentrl
from agentrl.serving import ServerThread

ROOT = Path(agentrl.__file__).parent


def hello_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    def root() -> dict[str, str]:
        return {"hello": "world"}

    return app


def test_only_serving_runs_uvicorn():
    """Every server goes through agentrl.serving.ServerThread: no other module imports uvicorn or
    defines a server thread of its own."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.name == "serving.py" and path.parent == ROOT:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n.split(".")[0] == "uvicorn" for n in names):
                offenders.append(f"{path.relative_to(ROOT)} imports uvicorn")
            if isinstance(node, ast.ClassDef) and node.name == "ServerThread":
                offenders.append(f"{path.relative_to(ROOT)} defines ServerThread")
    assert offenders == []


def test_servers_name_the_shared_server_thread():
    import agentrl.envs.webshop as webshop
    from agentrl.envs import remote
    from agentrl.envs.webshop import site

    assert remote.ServerThread is ServerThread
    assert site.ServerThread is ServerThread
    assert webshop.ServerThread is ServerThread


def test_port_zero_takes_a_free_port_and_serves():
    with ServerThread(hello_app()) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url, timeout=10).json() == {"hello": "world"}
    with pytest.raises(httpx.ConnectError):  # stopped: the port is closed
        httpx.get(server.url, timeout=2)


def test_a_taken_port_is_refused_with_the_address():
    with ServerThread(hello_app()) as server:
        with pytest.raises(OSError, match=rf"cannot bind 127\.0\.0\.1:{server.port}"):
            ServerThread(hello_app(), port=server.port).sock.listen()
        # the port is still the first server's
        assert httpx.get(server.url, timeout=10).status_code == 200


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_host_gets_a_bracketed_url():
    with ServerThread(hello_app(), "::1") as server:
        assert server.url == f"http://[::1]:{server.port}"
        assert httpx.get(server.url, timeout=10).status_code == 200


def test_webshop_serve_prints_its_url_and_serves():
    """The blocking site server listens before printing its URL, like the viewer."""
    code = "from agentrl.envs.webshop import serve; serve(port=0, num_products=50)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        r = httpx.get(url, timeout=10)  # redirects to a new session
        assert r.status_code == 303 and r.headers["location"].startswith("/s/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serving_beyond_loopback_without_a_token_is_warned(caplog):
    from agentrl.serving import warn_if_open

    with caplog.at_level("WARNING", logger="agentrl.serving"):
        warn_if_open("maze", "127.0.0.1", None)
        warn_if_open("maze", "0.0.0.0", "s3cret")
        assert not caplog.records
        warn_if_open("maze", "0.0.0.0", None)
    assert [r.getMessage() for r in caplog.records] == [
        "serving maze on 0.0.0.0 without a token: anyone who can reach the port can use it"
    ]
