"""The WebShop site under a real uvicorn on 127.0.0.1: same pages as the text env, escaping, hostile requests."""

import base64
import hashlib
import json
import random
import re
import socket
import threading
from html.parser import HTMLParser
from urllib.parse import quote

import httpx
import pytest

from agentrl.envs.webshop import WebShopEnv
from agentrl.envs.webshop.agents import oracle_actions
from agentrl.envs.webshop.catalogue import write_catalogue
from agentrl.envs.webshop.pages import SEP, parse_action
from agentrl.envs.webshop.site import MAX_BODY_BYTES, SCRIPT, ServerThread, create_app

HOSTILE_TITLE = "<script>alert('t')</script> Teapot & \"Kettle\""
HOSTILE_OPTION = '"><img src=x onerror=alert(1)>'


class VisibleText(HTMLParser):
    """Text nodes of <body> outside script/style, stripped, as the text env joins them; plus tag counts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.texts, self.tags, self._skip, self._in_body = [], [], 0, False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_body |= tag == "body"
        self._skip += tag in ("script", "style", "head", "title")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style", "head", "title")

    def handle_data(self, data):
        if self._in_body and not self._skip and data.strip():
            self.texts.append(data.strip())


def visible(html_text):
    parser = VisibleText()
    parser.feed(html_text)
    return parser


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app("test")) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def new_session(client, goal=0):
    r = client.get(f"/?goal={goal}", follow_redirects=False)
    assert r.status_code == 303
    return r.headers["location"]


def act(client, loc, action):
    verb, arg = parse_action(action)
    field = "search_query" if verb == "search" else "label"
    r = client.post(f"{loc}/{verb}", data={field: arg}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == loc
    return client.get(loc)


def test_server_binds_loopback(server):
    assert server.host == "127.0.0.1"


def test_pages_match_the_text_env(client):
    env = WebShopEnv(split="test")
    for goal in (0, 3, 77):
        obs, _ = env.reset(options={"task_id": str(goal)})
        loc = new_session(client, goal)
        page = client.get(loc)
        assert SEP.join(visible(page.text).texts) == obs
        actions = oracle_actions(env.shop, goal)
        actions[1:1] = ["click[next >]", "click[< prev]"] if "Next >" in env.step(actions[0])[0] else []
        env.reset(options={"task_id": str(goal)})
        for a in actions + ["click[nowhere]"]:
            obs, _reward, *_ = env.step(a)
            page = act(client, loc, a)
            assert SEP.join(visible(page.text).texts) == obs
            assert client.get(f"{loc}/state").json()["observation"] == obs
        state = client.get(f"{loc}/state").json()
        assert state["done"] and state["reward"] == env.session.reward == 1.0
        outcome = [a for t, a in visible(page.text).tags if a.get("id") == "outcome"]
        assert float(outcome[0]["data-reward"]) == 1.0


def test_session_ids_are_unguessable(client):
    ids = [new_session(client).rsplit("/", 1)[1] for _ in range(50)]
    assert len(set(ids)) == 50 and all(re.fullmatch(r"[A-Za-z0-9_-]{32}", i) for i in ids)
    assert client.get("/s/" + "A" * 32).status_code == 404
    assert client.get("/s/short").status_code == 404


def test_unknown_paths_and_bad_goals(client):
    for path in ("/docs", "/openapi.json", "/redoc", "/admin", "/s", "/static/webshop.js", "/../etc/passwd"):
        assert client.get(path).status_code == 404, path
    for goal in ("-1", "500", "abc", "1e3", "9" * 50):
        r = client.get("/", params={"goal": goal}, follow_redirects=False)
        assert r.status_code == 400 and "goal must be an integer in [0, 500)" in r.text
    assert client.get("/", follow_redirects=False).status_code == 303


def test_headers_and_inline_script_allowed_by_hash_only(client):
    r = client.get(new_session(client))
    csp = r.headers["content-security-policy"]
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    assert (
        f"script-src 'sha256-{digest}';" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    )
    assert f"<script>{SCRIPT}</script>" in r.text
    assert r.headers["x-content-type-options"] == "nosniff"


def test_browsers_get_the_page_from_the_post(client):
    loc = new_session(client)
    r = client.post(f"{loc}/search", data={"search_query": "kettle"}, headers={"accept": "text/html,*/*"})
    assert r.status_code == 200 and "Page 1 (Total results:" in r.text


def test_search_for_script_renders_as_text(client):
    loc = new_session(client)
    page = act(client, loc, "search[<script>alert(1)</script>]")
    assert "<script>alert" not in page.text
    assert [t for t, _ in visible(page.text).tags].count("script") == 1 and page.text.count("<script") == 1


def test_request_size_and_form_limits(client):
    loc = new_session(client)
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = client.post(f"{loc}/search", content=b"search_query=" + b"a" * MAX_BODY_BYTES, headers=form)
    assert r.status_code == 413

    def chunks():
        for _ in range(10):
            yield b"a" * 1000

    assert client.post(f"{loc}/search", content=chunks(), headers=form).status_code == 413
    assert client.post(f"{loc}/click", json={"label": "x"}).status_code == 415
    assert client.post(f"{loc}/click", content=b"label=\xff\xfe", headers=form).status_code == 400
    assert client.post(f"{loc}/click", content=b"label=%ff%fe", headers=form).status_code == 303  # no-op
    assert client.post(f"{loc}/click", content=b"label=back+to+search", headers=form).status_code == 303
    assert client.put(f"{loc}/click").status_code == 405
    assert client.get("/s/" + "x" * 20_000).status_code in (400, 404, 414, 431)


def test_fuzzed_requests_never_fail_the_server(client):
    rng = random.Random(0)
    loc = new_session(client)
    alphabet = "abc<>\"'&%[]{}/\\\x00é中 \n=+;"
    for _ in range(150):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        kind = rng.randrange(4)
        if kind == 0:
            r = client.post(f"{loc}/click", data={"label": junk})
        elif kind == 1:
            r = client.post(f"{loc}/search", data={"search_query": junk})
        elif kind == 2:
            r = client.post(
                f"{loc}/click",
                content=junk.encode("utf-8", "surrogatepass"),
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
        else:
            r = client.get("/" + quote(junk, safe="/<>'[]{}\"").lstrip("/"))
        assert r.status_code < 500, (kind, junk, r.status_code, r.text[:200])
    assert client.get(loc).status_code == 200


def test_session_store_is_bounded():
    with ServerThread(create_app("test", max_sessions=3)) as srv, httpx.Client(base_url=srv.url) as c:
        locs = [new_session(c) for _ in range(4)]
        assert c.get(locs[0]).status_code == 404
        assert all(c.get(x).status_code == 200 for x in locs[1:])


def test_concurrent_shoppers(server):
    env = WebShopEnv(split="test")
    results = {}

    def shop(goal):
        with httpx.Client(base_url=server.url, timeout=20) as c:
            loc = new_session(c, goal)
            for a in oracle_actions(env.shop, goal):
                act(c, loc, a)
            results[goal] = c.get(f"{loc}/state").json()["reward"]

    threads = [threading.Thread(target=shop, args=(g,)) for g in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == dict.fromkeys(range(8), 1.0)


def test_hostile_catalogue_text_is_escaped(tmp_path):
    write_catalogue(tmp_path, seed=0, num_products=50, goals_per_product=1)
    items_path = tmp_path / "items_shuffle_50.json"
    items = json.loads(items_path.read_text())
    items[0]["name"] = HOSTILE_TITLE
    items[0]["small_description"] = ["", "  spaced out  ", "<b>bold</b>"]
    group = next(iter(items[0]["customization_options"]))
    items[0]["customization_options"][group].append({"value": HOSTILE_OPTION})
    items_path.write_text(json.dumps(items))
    with (
        ServerThread(create_app("test", data_dir=str(tmp_path), num_products=50)) as srv,
        httpx.Client(base_url=srv.url) as c,
    ):
        loc = c.get("/?goal=0", follow_redirects=False).headers["location"]
        act(c, loc, f"search[{HOSTILE_TITLE}]")
        page = act(c, loc, f"click[{items[0]['asin'].lower()}]")
        parsed = visible(page.text)
        assert HOSTILE_TITLE in parsed.texts and HOSTILE_OPTION.lower() in parsed.texts
        assert [t for t, _ in parsed.tags].count("script") == 1 and "img" not in [t for t, _ in parsed.tags]
        assert SEP.join(parsed.texts) == c.get(f"{loc}/state").json()["observation"]
        features = visible(act(c, loc, "click[features]").text).texts
        assert features[-2:] == ["spaced out", "<b>bold</b>"]
        assert SEP.join(features) == c.get(f"{loc}/state").json()["observation"]
        act(c, loc, "click[< prev]")
        page = act(c, loc, f"click[{HOSTILE_OPTION.lower()}]")
        checked = [a for t, a in visible(page.text).tags if t == "input" and "checked" in a]
        assert [a["value"] for a in checked] == [HOSTILE_OPTION.lower()]


def test_free_port_is_really_listening(server):
    with socket.create_connection((server.host, server.port), timeout=5):
        pass
