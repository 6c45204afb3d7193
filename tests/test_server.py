"""``agentrl serve`` over real HTTP on 127.0.0.1 with a tiny model: OpenAI shapes, token ids, batching,
adapters, the api key, and hostile requests answered with 4xx while the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest
import torch

from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.policies.server import PolicyServer, _token_entry
from agentrl.serving import free_port

NAME = "tiny"
HELLO = [{"role": "user", "content": "You are in the hall. go north"}]


@pytest.fixture(scope="module")
def local(served_model_dir):
    """The same model in-process: what the server's answers must equal."""
    return HFPolicy.from_pretrained(served_model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(served_model_dir):
    with PolicyServer(
        served_model_dir, served_model_name=NAME, device="cpu", batch_wait_s=0.02, max_body_bytes=1_000_000
    ) as s:
        yield s


def chat(server, body, **kw):
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60, **kw)


def test_models_lists_the_served_name(server, served_model_dir):
    data = httpx.get(f"{server.url}/v1/models").json()
    assert data["object"] == "list"
    assert [(m["id"], m["parent"], m["root"]) for m in data["data"]] == [(NAME, None, str(served_model_dir))]


def test_chat_completion_shape_ids_and_usage_match_the_local_policy(server, local):
    r = chat(server, {"model": NAME, "messages": HELLO, "temperature": 0, "max_tokens": 7, "logprobs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    want = local.generate([HELLO], SamplingParams(temperature=0, max_new_tokens=7))[0]
    assert (
        body["object"] == "chat.completion" and body["model"] == NAME and body["id"].startswith("chatcmpl-")
    )
    assert body["prompt_token_ids"] == want.prompt_ids == local.prompt_ids(HELLO)
    (choice,) = body["choices"]
    assert choice["token_ids"] == want.response_ids
    assert choice["message"] == {"role": "assistant", "content": want.text}
    assert choice["finish_reason"] == want.finish_reason
    assert [t["logprob"] for t in choice["logprobs"]["content"]] == pytest.approx(want.logprobs, abs=1e-5)
    assert [t["top_logprobs"] for t in choice["logprobs"]["content"]] == [[]] * len(want.response_ids)
    assert body["usage"] == {
        "prompt_tokens": len(want.prompt_ids),
        "completion_tokens": len(want.response_ids),
        "total_tokens": len(want.prompt_ids) + len(want.response_ids),
    }
    assert (
        chat(server, {"messages": HELLO, "temperature": 0, "max_tokens": 7}).json()["choices"][0]["logprobs"]
        is None
    )


def test_token_entries_carry_the_token_text_and_bytes(server, local):
    body = chat(
        server, {"messages": HELLO, "temperature": 1.0, "seed": 3, "max_tokens": 12, "logprobs": True}
    ).json()
    content = body["choices"][0]["logprobs"]["content"]
    ids = body["choices"][0]["token_ids"]
    # a random model writes byte sequences that are not UTF-8: the token text shows them as U+FFFD,
    # the bytes keep them, and the joined bytes decode (lossily) to the response text
    joined = b"".join(bytes(t["bytes"]) for t in content)
    assert joined.decode("utf-8", errors="replace") == local.tokenizer.decode(ids)
    assert [t["token"] for t in content] == [local.tokenizer.decode([i]) for i in ids]
    text = "é ü 日本 go north"
    pieces = [
        _token_entry(local.tokenizer, i, 0.0)
        for i in local.tokenizer(text, add_special_tokens=False)["input_ids"]
    ]
    assert any(p["token"] == "\ufffd" for p in pieces)  # a character split over tokens
    assert b"".join(bytes(p["bytes"]) for p in pieces).decode("utf-8") == text


def test_top_logprobs_are_the_k_most_likely_tokens_at_each_position(server, local):
    body = chat(
        server,
        {
            "messages": HELLO,
            "temperature": 1.0,
            "seed": 1,
            "max_tokens": 5,
            "logprobs": True,
            "top_logprobs": 3,
        },
    ).json()
    choice = body["choices"][0]
    ids = body["prompt_token_ids"] + choice["token_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(local.model(torch.tensor([ids])).logits[0].float(), -1)
    n_prompt = len(body["prompt_token_ids"])
    for t, entry in enumerate(choice["logprobs"]["content"]):
        values, top_ids = logp[n_prompt - 1 + t].topk(3)
        assert [e["token"] for e in entry["top_logprobs"]] == [
            local.tokenizer.decode([i]) for i in top_ids.tolist()
        ]
        assert [e["logprob"] for e in entry["top_logprobs"]] == pytest.approx(values.tolist(), abs=1e-4)
        assert entry["logprob"] == pytest.approx(
            logp[n_prompt - 1 + t, choice["token_ids"][t]].item(), abs=1e-4
        )
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-6


def test_n_choices_and_seed(server):
    body = {"messages": HELLO, "temperature": 1.0, "max_tokens": 10, "n": 4, "seed": 11}
    a, b = chat(server, body).json(), chat(server, body).json()
    c = chat(server, {**body, "seed": 12}).json()
    ids = [ch["token_ids"] for ch in a["choices"]]
    assert [ch["index"] for ch in a["choices"]] == [0, 1, 2, 3]
    assert ids == [ch["token_ids"] for ch in b["choices"]]  # same seed, same answers
    assert ids != [ch["token_ids"] for ch in c["choices"]]
    assert len({tuple(i) for i in ids}) > 1  # the n samples of one request differ
    assert a["usage"]["prompt_tokens"] == len(a["prompt_token_ids"])
    assert a["usage"]["completion_tokens"] == sum(len(i) for i in ids)


def test_stop_strings_cut_the_text_and_include_stop_str_in_output_keeps_them(server, local):
    free = local.generate([HELLO], SamplingParams(temperature=0, max_new_tokens=20))[0]
    stop = free.text[4:6]
    assert stop and stop in free.text
    want = local.generate([HELLO], SamplingParams(temperature=0, max_new_tokens=20, stop=(stop,)))[0]
    body = {"messages": HELLO, "temperature": 0, "max_tokens": 20, "stop": stop}
    plain = chat(server, body).json()["choices"][0]
    kept = chat(server, {**body, "stop": [stop], "include_stop_str_in_output": True}).json()["choices"][0]
    assert plain["token_ids"] == kept["token_ids"] == want.response_ids
    assert kept["message"]["content"] == want.text and stop in want.text
    assert plain["message"]["content"] == want.text[: want.text.index(stop)]
    assert plain["finish_reason"] == "stop"


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, local):
    prompts = [[{"role": "user", "content": f"room {i}: " + "go east " * (i % 4)}] for i in range(16)]
    before = len(server.app.state.batcher.batch_sizes)

    async def send_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            rs = await asyncio.gather(
                *(
                    client.post(
                        "/v1/chat/completions", json={"messages": p, "temperature": 0, "max_tokens": 6}
                    )
                    for p in prompts
                )
            )
            return [r.json() for r in rs]

    answers = asyncio.run(send_all())
    sizes = server.app.state.batcher.batch_sizes[before:]
    want = local.generate(prompts, SamplingParams(temperature=0, max_new_tokens=6))
    assert [a["choices"][0]["token_ids"] for a in answers] == [w.response_ids for w in want]
    assert [a["prompt_token_ids"] for a in answers] == [w.prompt_ids for w in want]
    assert sum(sizes) == 16
    assert len(sizes) < 16 and max(sizes) >= 4, sizes


def test_tokenize_endpoint(server, local):
    r = httpx.post(f"{server.url}/tokenize", json={"model": NAME, "messages": HELLO})
    assert r.json() == {
        "tokens": local.prompt_ids(HELLO),
        "count": len(local.prompt_ids(HELLO)),
        "max_model_len": 2048,
    }
    bare = httpx.post(
        f"{server.url}/tokenize", json={"messages": HELLO, "add_generation_prompt": False}
    ).json()["tokens"]
    assert local.prompt_ids(HELLO)[: len(bare)] == bare and len(bare) < len(local.prompt_ids(HELLO))
    r = httpx.post(f"{server.url}/tokenize", json={"model": "nope", "messages": HELLO})
    assert r.status_code == 404


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"model": "gpt-9", "messages": HELLO}, 404, "`gpt-9` does not exist"),
        ({"messages": HELLO, "max_tokens": -3}, 400, "max_tokens"),
        ({"messages": HELLO, "max_tokens": "lots"}, 400, "max_tokens"),
        ({"messages": HELLO, "n": 0}, 400, "n"),
        ({"messages": HELLO, "n": 1000}, 400, "n"),
        ({"messages": HELLO, "temperature": -1}, 400, "temperature"),
        ({"messages": HELLO, "top_p": 0}, 400, "top_p"),
        ({"messages": HELLO, "top_logprobs": 2}, 400, "top_logprobs needs logprobs"),
        ({"messages": HELLO, "logprobs": True, "top_logprobs": 99}, 400, "top_logprobs"),
        ({"messages": HELLO, "stop": [""]}, 400, "stop"),
        ({"messages": HELLO, "seed": 2**70}, 400, "seed"),
        (
            {"messages": HELLO, "stream_options": {"include_usage": True}},
            400,
            "stream_options needs stream=true",
        ),
        (
            {"messages": [{"role": "user", "content": "go north " * 1500}], "max_tokens": 8, "stream": True},
            400,
            "exceeds the model's 2048 positions",
        ),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            400,
            "only text",
        ),
        (
            {"messages": [{"role": "user", "content": "go north " * 1500}], "max_tokens": 8},
            400,
            "exceeds the model's 2048 positions",
        ),
        ({}, 400, "messages"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, body, status, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert chat(server, {"messages": HELLO, "max_tokens": 2}).status_code == 200


def test_oversized_bodies_are_refused_with_and_without_a_length(server):
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * 1_500_000}]}).encode()
    r = httpx.post(
        f"{server.url}/v1/chat/completions", content=huge, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]

    def chunks():  # no content-length: the server counts while reading
        for _ in range(30):
            yield b"x" * 100_000

    r = httpx.post(
        f"{server.url}/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert chat(server, {"messages": HELLO, "max_tokens": 2}).status_code == 200


def test_unknown_routes_and_methods_answer_json(server):
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{server.url}/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def perturbed_adapter(served_model_dir, directory, seed: int) -> HFPolicy:
    """An in-process policy whose LoRA B matrices got random values (as training would), saved to ``directory``."""
    pol = HFPolicy.from_pretrained(served_model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    pol.save_adapter(directory)
    return pol


def test_load_and_unload_lora_adapter_endpoints(server, local, served_model_dir, tmp_path):
    trained = perturbed_adapter(served_model_dir, tmp_path / "a", seed=3)
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    want = trained.generate([HELLO], greedy)[0]
    base = local.generate([HELLO], greedy)[0]
    assert want.response_ids != base.response_ids  # the adapter matters

    r = httpx.post(
        f"{server.url}/v1/load_lora_adapter", json={"lora_name": "trained", "lora_path": str(tmp_path / "a")}
    )
    assert r.status_code == 200 and "trained" in r.text
    try:
        models = httpx.get(f"{server.url}/v1/models").json()["data"]
        assert [(m["id"], m["parent"]) for m in models] == [(NAME, None), ("trained", NAME)]
        body = {"messages": HELLO, "temperature": 0, "max_tokens": 8, "logprobs": True}
        got = chat(server, {**body, "model": "trained"}).json()["choices"][0]
        assert got["token_ids"] == want.response_ids
        assert [t["logprob"] for t in got["logprobs"]["content"]] == pytest.approx(want.logprobs, abs=1e-5)
        assert chat(server, {**body, "model": NAME}).json()["choices"][0]["token_ids"] == base.response_ids

        again = httpx.post(
            f"{server.url}/v1/load_lora_adapter",
            json={"lora_name": "trained", "lora_path": str(tmp_path / "a")},
        )
        assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
        for bad, words in [
            ({"lora_name": "x", "lora_path": str(tmp_path / "nowhere")}, "no adapter_config.json"),
            ({"lora_name": NAME, "lora_path": str(tmp_path / "a")}, "base model's name"),
            ({"lora_name": "x"}, "lora_path"),
        ]:
            r = httpx.post(f"{server.url}/v1/load_lora_adapter", json=bad)
            assert r.status_code == 400 and words in r.json()["error"]["message"]
    finally:
        r = httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "trained"})
    assert r.status_code == 200
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == [NAME]
    r = chat(server, {"messages": HELLO, "model": "trained"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "trained"})
    assert r.status_code == 404 and "cannot be found" in r.json()["error"]["message"]
    assert (
        chat(server, {"messages": HELLO, "temperature": 0, "max_tokens": 8}).json()["choices"][0]["token_ids"]
        == base.response_ids
    )


def test_api_key_and_start_time_adapter(served_model_dir, tmp_path):
    perturbed_adapter(served_model_dir, tmp_path / "warm", seed=4)
    with PolicyServer(
        served_model_dir,
        served_model_name=NAME,
        device="cpu",
        api_key="s3cret",
        adapter=f"warm={tmp_path / 'warm'}",
    ) as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for r in (
                httpx.get(f"{s.url}/v1/models", headers=headers),
                chat(s, {"messages": HELLO}, headers=headers),
                httpx.post(f"{s.url}/v1/unload_lora_adapter", json={"lora_name": "warm"}, headers=headers),
            ):
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = {"Authorization": "Bearer s3cret"}
        assert [m["id"] for m in httpx.get(f"{s.url}/v1/models", headers=ok).json()["data"]] == [NAME, "warm"]
        assert chat(s, {"messages": HELLO, "model": "warm", "max_tokens": 2}, headers=ok).status_code == 200
        assert httpx.get(f"{s.url}/health").json() == {"status": "ok"}


@pytest.mark.slow
def test_serve_blocks_and_answers_in_a_subprocess(served_model_dir):
    port = free_port()
    code = f"from agentrl.policies.server import serve; serve({str(served_model_dir)!r}, port={port}, served_model_name='m', device='cpu')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "serve did not come up within 60 s"
                time.sleep(0.2)
        assert [m["id"] for m in r.json()["data"]] == ["m"]
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"messages": HELLO, "max_tokens": 3},
            timeout=60,
        )
        assert r.status_code == 200 and len(r.json()["choices"][0]["token_ids"]) <= 3
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_request_for_an_adapter_unloaded_while_it_waited_gets_a_404(server):
    from agentrl.policies.server import APIError

    with pytest.raises(APIError, match="unloaded") as e:
        server.app.state.engine.generate("ghost", [[1, 2, 3]], SamplingParams(max_new_tokens=2))
    assert e.value.status == 404


def test_messages_reach_the_template_as_sent(server, local):
    messages = [
        {
            "role": "system",
            "content": [{"type": "text", "text": "You are "}, {"type": "text", "text": "an agent."}],
        },
        {"role": "user", "content": "go north", "name": "player"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "and now?"},
    ]
    as_local = [{"role": "system", "content": "You are an agent."}, *messages[1:]]
    got = httpx.post(f"{server.url}/tokenize", json={"messages": messages}).json()["tokens"]
    assert got == local.prompt_ids(as_local)


def test_a_seeded_request_gets_the_same_answer_whatever_runs_beside_it(server):
    seeded = {"messages": HELLO, "temperature": 1.0, "max_tokens": 10, "seed": 99}
    alone = chat(server, seeded).json()["choices"][0]["token_ids"]

    async def crowd():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            others = [
                {"messages": [{"role": "user", "content": f"room {i}"}], "temperature": 1.0, "max_tokens": 10}
                for i in range(6)
            ]
            rs = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=b) for b in [*others[:3], seeded, *others[3:]])
            )
            return rs[3].json()["choices"][0]["token_ids"]

    assert asyncio.run(crowd()) == alone


# ----------------------------------------------------------------------------- streaming (stream=true)


def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def collect(stream):
    """The chunks of a streamed completion, and per choice: the joined text, finish reason, last chunk."""
    chunks = list(stream)
    texts, finish, last = {}, {}, {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason is not None:
                finish[ch.index], last[ch.index] = ch.finish_reason, ch
    return chunks, texts, finish, last


def test_streamed_answers_join_to_the_non_streamed_one_with_usage(server):
    client = openai_client(server)
    kwargs = {"model": NAME, "messages": HELLO, "temperature": 0, "max_tokens": 12}
    whole = client.chat.completions.create(**kwargs)
    chunks, texts, finish, last = collect(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert texts == {0: whole.choices[0].message.content}
    assert finish == {0: whole.choices[0].finish_reason}
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert len({c.id for c in chunks}) == 1
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 2  # the text arrives in pieces as it is sampled, not in one block
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == {
        **whole.usage.model_dump(),
    }
    assert all(c.usage is None for c in chunks[:-1])
    assert last[0].model_extra["token_ids"] == whole.choices[0].model_extra["token_ids"]
    _, _, _, _ = collect(
        client.chat.completions.create(**kwargs, stream=True)
    )  # no usage asked: no usage chunk
    plain = list(client.chat.completions.create(**kwargs, stream=True))
    assert all(c.choices for c in plain) and all(getattr(c, "usage", None) is None for c in plain)


def test_streaming_keeps_stop_strings_n_and_logprobs_as_the_non_streamed_answer(server):
    client = openai_client(server)
    base = {"model": NAME, "messages": HELLO, "temperature": 0, "max_tokens": 16}
    whole = client.chat.completions.create(**base)
    text = whole.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3 and stop in text
    for extra in ({"stop": [stop]}, {"n": 2}, {"logprobs": True, "top_logprobs": 2}):
        want = client.chat.completions.create(**base, **extra)
        _, texts, finish, last = collect(client.chat.completions.create(**base, **extra, stream=True))
        assert texts == {c.index: c.message.content for c in want.choices}
        assert finish == {c.index: c.finish_reason for c in want.choices}
        if "logprobs" in extra:
            got = last[0].logprobs.content
            assert [t.token for t in got] == [t.token for t in want.choices[0].logprobs.content]
            assert [t.logprob for t in got] == pytest.approx(
                [t.logprob for t in want.choices[0].logprobs.content]
            )
            assert [len(t.top_logprobs) for t in got] == [2] * len(got)


def test_a_streamed_request_needs_the_api_key_like_any_other(served_model_dir):
    from openai import AuthenticationError, OpenAI

    with PolicyServer(served_model_dir, served_model_name=NAME, device="cpu", api_key="k3y") as s:
        bad = OpenAI(base_url=f"{s.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(AuthenticationError):
            list(bad.chat.completions.create(model=NAME, messages=HELLO, max_tokens=3, stream=True))
        good = OpenAI(base_url=f"{s.url}/v1", api_key="k3y", max_retries=0)
        _, texts, _, _ = collect(
            good.chat.completions.create(model=NAME, messages=HELLO, max_tokens=3, stream=True)
        )
        assert 0 in texts
