"""The ``openai`` policy against a real ``agentrl serve`` on 127.0.0.1: same ids, text and log-probs as
the in-process ``hf`` policy, concurrency, LoRA sync through the adapter endpoints, the api key,
retries while a server comes up or answers 5xx, and servers that leave out token ids."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agentrl.agents import StepPrompt
from agentrl.envs.maze import MazeEnv
from agentrl.policies import Policy, SamplingParams, make_policy
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.policies.logprobs import pack_samples
from agentrl.policies.openai import MissingTokenIdsError, OpenAIPolicy, OpenAIServerError
from agentrl.policies.server import PolicyServer
from agentrl.serving import ServerThread, free_port

NAME = "tiny"
GREEDY = SamplingParams(temperature=0, max_new_tokens=8)


@pytest.fixture(scope="module")
def local(served_model_dir):
    """In-process hf policy with a LoRA adapter (zero-initialised: equal to the base model until perturbed)."""
    return HFPolicy.from_pretrained(served_model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")


@pytest.fixture(scope="module")
def server(served_model_dir):
    with PolicyServer(served_model_dir, served_model_name=NAME, device="cpu", batch_wait_s=0.02) as s:
        yield s


@pytest.fixture(scope="module")
def prompts():
    """Maze step prompts as the agent builds them."""
    env, builder, out = MazeEnv(), StepPrompt(history_k=2), []
    for i in range(4):
        obs, info = env.reset(options={"task_id": f"maze-{i}"})
        out.append(
            builder.build("", obs, [("You are in the hall.", "go north")] * i, info["admissible_actions"])
        )
    return out


def set_lora(policy: HFPolicy, seed: int | None, scale: float = 0.5) -> None:
    """Random LoRA B matrices (as training would give), or zeros (seed None: the base model)."""
    gen = torch.Generator().manual_seed(seed or 0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(
                    torch.randn(p.shape, generator=gen) * scale if seed is not None else torch.zeros_like(p)
                )


def test_registry_builds_the_policy(server):
    pol = make_policy("openai", base_url=server.url + "/v1/", model=NAME, concurrency=2)
    assert isinstance(pol, OpenAIPolicy) and isinstance(pol, Policy)
    assert pol.root == server.url and pol.models() == [NAME]
    with pytest.raises(ValueError, match="http"):
        OpenAIPolicy("localhost:8000", NAME)
    with pytest.raises(ValueError, match="concurrency"):
        OpenAIPolicy(server.url, NAME, concurrency=0)


def test_greedy_generations_equal_the_in_process_policy(server, local, prompts):
    set_lora(local, None)
    got = OpenAIPolicy(server.url, NAME).generate(prompts, GREEDY)
    want = local.generate(prompts, GREEDY)
    for g, w in zip(got, want):
        assert (g.prompt_ids, g.response_ids, g.text, g.finish_reason) == (
            w.prompt_ids,
            w.response_ids,
            w.text,
            w.finish_reason,
        )
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


def test_prompt_ids_from_the_server_or_a_local_tokenizer(server, local, prompts, served_model_dir):
    assert OpenAIPolicy(server.url, NAME).prompt_ids(prompts[1]) == local.prompt_ids(prompts[1])
    assert OpenAIPolicy(server.url, NAME, tokenizer=served_model_dir).prompt_ids(
        prompts[2]
    ) == local.prompt_ids(prompts[2])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_rescoring_the_ids_in_process(server, local, prompts, temperature):
    set_lora(local, None)
    gens = OpenAIPolicy(server.url, NAME).generate(
        prompts, SamplingParams(temperature=temperature, max_new_tokens=10, seed=5)
    )
    batch = pack_samples([g.prompt_ids for g in gens], [g.response_ids for g in gens], local.pad_token_id)
    with torch.no_grad():
        lp = local.logprobs(
            batch.input_ids, batch.attention_mask, batch.response_mask, temperature=temperature
        ).logprobs
    for g, row in zip(gens, batch.responses(lp)):
        assert len(g.logprobs) == len(g.response_ids) > 0
        assert g.logprobs == pytest.approx(row.tolist(), abs=1e-4)


def test_seeds_make_calls_reproducible_and_identical_prompts_still_differ(server, prompts):
    pol = OpenAIPolicy(server.url, NAME)
    group = [prompts[0]] * 4  # a group's first turn: the same prompt N times
    params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=21)
    a, b = pol.generate(group, params), pol.generate(group, params)
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    assert len({tuple(g.response_ids) for g in a}) > 1


def test_sixteen_concurrent_requests_are_all_answered_in_batches(server, local, prompts):
    set_lora(local, None)
    many = [[{"role": "user", "content": f"step {i}: " + "go west " * (i % 5)}] for i in range(16)]
    before = len(server.app.state.batcher.batch_sizes)
    got = OpenAIPolicy(server.url, NAME, concurrency=16).generate(many, GREEDY)
    sizes = server.app.state.batcher.batch_sizes[before:]
    assert [g.response_ids for g in got] == [w.response_ids for w in local.generate(many, GREEDY)]
    assert sum(sizes) == 16 and len(sizes) < 16 and max(sizes) >= 4, sizes


def test_generate_works_inside_a_running_event_loop(server, prompts):
    pol = OpenAIPolicy(server.url, NAME)

    async def inside():
        return pol.generate(prompts[:1], GREEDY), await pol.agenerate(prompts[:1], GREEDY)

    sync, native = asyncio.run(inside())
    assert sync[0].response_ids == native[0].response_ids


def test_sync_adapter_loads_replaces_and_unloads_lora_weights(server, local, prompts, tmp_path):
    pol = OpenAIPolicy(server.url, NAME)
    base = pol.generate(prompts, GREEDY)
    try:
        for step, seed in enumerate((3, 9)):  # two training iterations' weights under one name
            set_lora(local, seed)
            local.save_adapter(tmp_path / f"iter{step}")
            pol.sync_adapter(tmp_path / f"iter{step}", "policy")
            assert pol.model == "policy" and pol.models() == [NAME, "policy"]
            got, want = pol.generate(prompts, GREEDY), local.generate(prompts, GREEDY)
            assert [g.response_ids for g in got] == [w.response_ids for w in want]
            for g, w in zip(got, want):
                assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)
            assert [g.response_ids for g in got] != [b.response_ids for b in base]
        # the base model is still served under its own name
        assert [g.response_ids for g in OpenAIPolicy(server.url, NAME).generate(prompts, GREEDY)] == [
            b.response_ids for b in base
        ]
        # a second client that never loaded "policy" replaces it too (the server says it is already loaded)
        other = OpenAIPolicy(server.url, NAME)
        other.sync_adapter(tmp_path / "iter0", "policy")
        set_lora(local, 3)
        assert [g.response_ids for g in other.generate(prompts, GREEDY)] == [
            w.response_ids for w in local.generate(prompts, GREEDY)
        ]
    finally:
        pol.unload_adapter("policy")
        set_lora(local, None)
    assert pol.models() == [NAME]
    with pytest.raises(OpenAIServerError, match="`policy` does not exist") as e:
        pol.generate(prompts[:1], GREEDY)
    assert e.value.status == 404
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        pol.sync_adapter(tmp_path / "nowhere", "policy")


def received_paths(app: FastAPI) -> list[str]:
    """The paths of the requests ``app`` receives, in order (a middleware; add it before the server starts)."""
    seen: list[str] = []

    @app.middleware("http")
    async def count(request: Request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    return seen


def record_backoff(pol: OpenAIPolicy) -> list[float]:
    """The backoff delays ``pol`` asks for; each is waited as a zero sleep."""
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    pol.sleep = sleep
    return delays


def test_api_key(served_model_dir, prompts):
    keyed = PolicyServer(served_model_dir, served_model_name=NAME, device="cpu", api_key="k3y")
    received = received_paths(keyed.app)
    with keyed as s:
        assert OpenAIPolicy(s.url, NAME, api_key="k3y").generate(prompts[:1], GREEDY)[0].response_ids
        received.clear()
        pol = OpenAIPolicy(s.url, NAME, api_key="nope", retries=3, backoff_s=0.01)
        delays = record_backoff(pol)
        with pytest.raises(OpenAIServerError, match="401.*Incorrect API key") as e:
            pol.generate(prompts[:1], GREEDY)
        # a 4xx is not retried: the server saw one request and the policy never backed off
        assert e.value.status == 401 and received == ["/v1/chat/completions"] and delays == []


def test_a_bad_request_is_raised_with_the_servers_message(server, prompts):
    with pytest.raises(OpenAIServerError, match="400.*2048 positions"):
        OpenAIPolicy(server.url, NAME).generate([[{"role": "user", "content": "go north " * 1500}]], GREEDY)


def test_retries_until_a_server_that_was_down_comes_up(served_model_dir, prompts):
    port = free_port()
    late = PolicyServer(
        served_model_dir, served_model_name=NAME, device="cpu", port=port
    )  # loaded, not yet listening
    pol = OpenAIPolicy(f"http://127.0.0.1:{port}", NAME, retries=6, backoff_s=0.1)
    delays: list[float] = []
    starting: list[asyncio.Future] = []

    async def sleep(delay: float) -> None:
        """The first backoff is where the server comes up; every waiting request waits for it."""
        delays.append(delay)
        if not starting:
            starting.append(asyncio.ensure_future(asyncio.to_thread(late.start)))
        await starting[0]

    pol.sleep = sleep
    try:
        got = pol.generate(prompts[:2], GREEDY)
        # each request that found no server backed off once, by backoff_s, and its retry was answered
        assert 1 <= len(delays) <= 2 and set(delays) == {0.1}
        assert all(g.response_ids for g in got)
    finally:
        if starting:
            late.stop()


def test_a_server_that_never_comes_up_gives_a_clear_error():
    pol = OpenAIPolicy(f"http://127.0.0.1:{free_port()}", NAME, retries=2, backoff_s=0.01)
    with pytest.raises(OpenAIServerError, match=r"failed after 3 attempt\(s\); last error: ConnectError"):
        pol.generate([[{"role": "user", "content": "hi"}]], GREEDY)


def proxy_app(target: str, *, fail_first: int = 0, drop_ids: bool = False):
    """A real HTTP proxy in front of agentrl serve: answers 503 to its first ``fail_first`` requests
    (a server under load) and, with ``drop_ids``, strips the token ids (standing in for a plain
    OpenAI endpoint, which cannot run here)."""
    app = FastAPI()
    app.state.seen = 0

    @app.post("/v1/chat/completions")
    async def forward(request: Request):
        app.state.seen += 1
        if app.state.seen <= fail_first:
            return JSONResponse({"error": {"message": "overloaded, try again"}}, status_code=503)
        body = await request.json()
        if drop_ids:
            body = {
                k: v for k, v in body.items() if k not in ("return_token_ids", "include_stop_str_in_output")
            }
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(f"{target}/v1/chat/completions", json=body)
        out = r.json()
        if drop_ids:
            out.pop("prompt_token_ids", None)
            for choice in out.get("choices", []):
                choice.pop("token_ids", None)
        return JSONResponse(out, status_code=r.status_code)

    return app


def test_5xx_answers_are_retried(server, prompts):
    app = proxy_app(server.url, fail_first=2)
    with ServerThread(app) as proxy:
        got = OpenAIPolicy(proxy.url, NAME, retries=3, backoff_s=0.01).generate(prompts[:1], GREEDY)
        assert app.state.seen == 3 and got[0].response_ids
        app.state.seen = -10
        with pytest.raises(
            OpenAIServerError, match=r"failed after 2 attempt\(s\); last error: HTTP 503: overloaded"
        ):
            OpenAIPolicy(proxy.url, NAME, retries=1, backoff_s=0.01).generate(prompts[:1], GREEDY)


def test_a_server_without_token_ids_is_refused_for_training_but_can_sample(server, local, prompts):
    set_lora(local, None)
    with ServerThread(proxy_app(server.url, drop_ids=True)) as proxy:
        with pytest.raises(
            MissingTokenIdsError,
            match=r"no prompt_token_ids and no choices\[0\]\.token_ids.*require_token_ids=False",
        ):
            OpenAIPolicy(proxy.url, NAME).generate(prompts[:1], GREEDY)
        (g,) = OpenAIPolicy(proxy.url, NAME, require_token_ids=False).generate(prompts[:1], GREEDY)
    want = local.generate(prompts[:1], GREEDY)[0]
    assert g.info["sampling_only"] is True and g.prompt_ids == [] and g.response_ids == []
    assert g.text == want.text and g.logprobs == pytest.approx(want.logprobs, abs=1e-5)


def test_stop_strings_stay_in_the_response_as_in_the_hf_policy(server, local, prompts):
    set_lora(local, None)
    free = local.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=20))[0]
    stop = free.text[3:5]
    params = SamplingParams(temperature=0, max_new_tokens=20, stop=(stop,))
    (got,), (want,) = (
        OpenAIPolicy(server.url, NAME).generate(prompts[:1], params),
        local.generate(prompts[:1], params),
    )
    assert (got.text, got.response_ids, got.finish_reason) == (want.text, want.response_ids, "stop")
    assert stop in got.text


def test_a_maze_rollout_through_the_server_equals_the_in_process_rollout(server, local):
    from agentrl.rollout import rollout

    set_lora(local, None)
    params = SamplingParams(temperature=0, max_new_tokens=12)

    def play(policy):
        groups = rollout(
            policy,
            [MazeEnv() for _ in range(4)],
            ["maze-3", "maze-5"],
            2,
            max_turns=3,
            params=params,
            seeds=[1, 2],
        )
        return [
            [(s.prompt_ids, s.response_ids, s.response, s.info["finish_reason"]) for s in t.steps]
            for g in groups
            for t in g.trajectories
        ], groups

    served, groups = play(OpenAIPolicy(server.url, NAME, concurrency=4))
    in_process, _ = play(local)
    assert served == in_process
    steps = [s for g in groups for t in g.trajectories for s in t.steps]
    assert steps and all(len(s.response_logprobs) == len(s.response_ids) > 0 for s in steps)
    assert not any("error" in t.info for g in groups for t in g.trajectories)


def test_top_logprobs_through_the_server_match_the_in_process_sampler(server, local, prompts):
    """``SamplingParams.top_logprobs`` travels as the API's ``top_logprobs``; the client hands back the k
    largest log-probs per token, which equal those the in-process sampler records (same weights)."""
    set_lora(local, None)
    params = SamplingParams(temperature=0.0, max_new_tokens=6, seed=5, top_logprobs=3)
    remote = OpenAIPolicy(server.url, NAME).generate(prompts, params)
    here = local.generate(prompts, params)
    for r, h in zip(remote, here):
        assert r.response_ids == h.response_ids
        assert r.top_logprobs is not None and h.top_logprobs is not None
        assert len(r.top_logprobs) == len(r.response_ids) and all(len(t) == 3 for t in r.top_logprobs)
        for a, b in zip(r.top_logprobs, h.top_logprobs):
            assert a == pytest.approx(b, abs=1e-4)
