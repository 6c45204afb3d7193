"""The retrieval server (Search-R1 /retrieve) on a real uvicorn: results, concurrency, hostile inputs, CLI."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agentrl.envs.search import (
    BM25Retriever,
    RemoteRetriever,
    RetrieverError,
    SearchEnv,
    generate_world,
    oracle_actions,
)
from agentrl.envs.search.server import MAX_QUERIES, create_retrieval_app
from agentrl.serving import ServerThread, free_port

SMALL = {"num_docs": 400, "num_train": 200, "num_test": 50}
TOKEN = "tok-123"


@pytest.fixture(scope="module")
def world():
    return generate_world(7, **SMALL)


@pytest.fixture(scope="module")
def retriever(world):
    return BM25Retriever(world.docs)


@pytest.fixture(scope="module")
def server(retriever):
    with ServerThread(create_retrieval_app(retriever, token=TOKEN)) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c


def test_retrieve_matches_the_in_process_index(client, retriever, world):
    queries = [h.question for q in world.splits["test"][:10] for h in q.decomposition]
    r = client.post("/retrieve", json={"queries": queries, "topk": 3, "return_scores": True})
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == len(queries)
    for q, hits in zip(queries, result):
        local = retriever.search(q, 3)
        assert [h["document"]["id"] for h in hits] == [h.doc.id for h in local]
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in local])
        assert hits[0]["document"]["contents"] == local[0].doc.contents
    plain = client.post("/retrieve", json={"queries": queries[:1], "topk": 2}).json()["result"][0]
    assert set(plain[0]) == {"id", "contents"} and len(plain) == 2


def test_search_env_through_the_server_equals_local(server, world):
    local = SearchEnv("test", seed=7, **SMALL)
    remote = SearchEnv("test", seed=7, **SMALL, retriever_url=server.url, retriever_token=TOKEN)
    for q in world.splits["test"][:10]:
        for env in (local, remote):
            env.reset(seed=0, options={"task_id": q.id})
        for action in oracle_actions(q):
            assert local.step(action) == remote.step(action)
    remote.close()


def test_with_a_server_the_env_needs_only_the_questions(server, world, tmp_path):
    paths = world.export(tmp_path)
    env = SearchEnv("test", qa_path=str(paths["test"]), retriever_url=server.url, retriever_token=TOKEN)
    q = world.splits["test"][1]
    env.reset(seed=0, options={"task_id": q.id})
    steps = [env.step(a) for a in oracle_actions(q)]
    assert steps[-1][1] == 1.0 and steps[q.hops - 1][4]["answer_in_results"]
    with pytest.raises(ValueError, match="qa_path alone is enough with a retriever_url"):
        SearchEnv("test", qa_path=str(paths["test"]))


def test_sixteen_concurrent_clients_get_correct_answers(server, retriever, world):
    queries = [h.question for q in world.splits["train"][:64] for h in q.decomposition]
    expected = {q: [h.doc.id for h in retriever.search(q, 3)] for q in queries}

    def worker(i):
        rr = RemoteRetriever(server.url, token=TOKEN)
        try:
            return [(q, [h.doc.id for h in rr.search(q, 3)]) for q in queries[i::16]]
        finally:
            rr.close()

    with ThreadPoolExecutor(16) as pool:
        answers = [pair for part in pool.map(worker, range(16)) for pair in part]
    assert len(answers) == len(queries) and all(ids == expected[q] for q, ids in answers)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{oops", 400, "request body is not valid JSON"),
        (b'"just a string"', 422, "the body must be a JSON object, got str"),
        (b'{"queries": []}', 422, "'queries' must be a non-empty list of strings"),
        (b'{"queries": "abc"}', 422, "'queries' must be a non-empty list of strings"),
        (b'{"queries": ["a", 5]}', 422, "queries[1] must be a string, got int"),
        (b'{"queries": ["a"], "topk": 0}', 422, "'topk' must be an int in 1..100, got 0"),
        (b'{"queries": ["a"], "topk": true}', 422, "'topk' must be an int in 1..100, got True"),
        (b'{"queries": ["a"], "topk": 1000}', 422, "got 1000"),
        (b'{"queries": ["a"], "return_scores": "yes"}', 422, "'return_scores' must be true or false"),
        (b'{"queries": ["a"], "drop": 1}', 422, "unknown field(s) ['drop']"),
    ],
)
def test_malformed_requests_get_clear_errors(client, body, status, message):
    r = client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and message in r.json()["error"]


def test_hostile_sizes_and_tokens_leave_the_server_up(client, server):
    r = client.post("/retrieve", json={"queries": ["x" * 3000]})
    assert r.status_code == 422 and "queries[0] has 3000 characters; the limit is 2000" in r.json()["error"]
    r = client.post("/retrieve", json={"queries": ["a"] * (MAX_QUERIES + 1)})
    assert r.status_code == 422 and f"at most {MAX_QUERIES} queries per request" in r.json()["error"]
    r = client.post("/retrieve", json={"queries": ["a " * 600_000]})
    assert r.status_code == 413 and "request body too large" in r.json()["error"]
    assert httpx.post(server.url + "/retrieve", json={"queries": ["a"]}).status_code == 401
    unauthorised = httpx.post(
        server.url + "/retrieve", content=b"{oops"
    )  # the token is checked before the body
    assert unauthorised.status_code == 401 and unauthorised.json()["error"] == "missing or wrong bearer token"
    with pytest.raises(RetrieverError, match="answered 401"):
        RemoteRetriever(server.url, token="bad").search("a")
    odd = client.post("/retrieve", json={"queries": ["", "!!!", "\u00e9\u00e8 \U0001f600", "the of and"]})
    assert odd.status_code == 200 and odd.json()["result"] == [[], [], [], []]
    assert client.get("/health").json() == {"ok": True, "documents": 400}


def test_unreachable_server_is_a_clear_error():
    rr = RemoteRetriever(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(RetrieverError, match="unreachable"):
        rr.search("anything")


@pytest.mark.slow
def test_module_cli_export_and_serve(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "agentrl.envs.search", "export", str(tmp_path), "--num-docs", "300"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        out.returncode == 0 and (tmp_path / "corpus.jsonl").is_file() and (tmp_path / "test.jsonl").is_file()
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentrl.envs.search",
            "serve",
            "--port",
            str(port),
            "--corpus",
            str(tmp_path / "corpus.jsonl"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/retrieve", json={"queries": ["city"], "topk": 1}, timeout=5
                )
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.status_code == 200 and len(r.json()["result"][0]) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
