"""Rollouts through several ``agentrl serve`` servers (``agentrl.policies.pool``): requests spread by
load, a server killed mid-rollout loses no episode and is named in the metrics, a server that comes
back gets the current adapter first, the URL-file form, and config errors."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentrl.agents import StepPrompt
from agentrl.config import ConfigError, load_config
from agentrl.envs.maze import MazeEnv
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.policies.openai import OpenAIPolicy, OpenAIServerError
from agentrl.policies.pool import ServerPool, read_urls
from agentrl.policies.server import PolicyServer
from agentrl.rollout import rollout
from agentrl.serving import free_port
from agentrl.trainers import Trainer
from agentrl.trainers.metrics import read_metrics

NAME = "tiny"
SEEDED = SamplingParams(temperature=1.0, max_new_tokens=6, seed=11)


@contextlib.contextmanager
def serve_processes(model_dir: Path, n: int) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    """``n`` real ``agentrl serve`` processes on free 127.0.0.1 ports: [(url, process)]."""
    procs = []
    try:
        for _ in range(n):
            port = free_port()
            code = (
                "from agentrl.policies.server import serve; "
                f"serve({str(model_dir)!r}, port={port}, served_model_name={NAME!r}, device='cpu')"
            )
            proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
            procs.append((f"http://127.0.0.1:{port}", proc))
        deadline = time.monotonic() + 120
        for url, proc in procs:
            while True:
                try:
                    httpx.get(f"{url}/v1/models", timeout=1)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    assert time.monotonic() < deadline, "agentrl serve did not come up within 120 s"
                    time.sleep(0.2)
        yield procs
    finally:
        for _, proc in procs:
            proc.kill()
            proc.wait(10)


def maze_prompts(n: int) -> list[list[dict[str, str]]]:
    env, builder, out = MazeEnv(), StepPrompt(history_k=1), []
    for i in range(n):
        obs, info = env.reset(options={"task_id": f"maze-{i % 8}"})
        out.append(builder.build("", obs, [], info["admissible_actions"]))
    return out


# ---------------------------------------------------------------------------------------------- config
def test_url_forms_and_clear_errors(tmp_path):
    listed = tmp_path / "servers.txt"
    listed.write_text("# rollout servers\nhttp://10.0.0.1:8000/v1\n\n  http://10.0.0.2:8000  # the second\n")
    assert read_urls("http://a:1/v1") == ["http://a:1/v1"]
    assert read_urls(str(listed)) == ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000"]
    cfg = load_config(None, [f"rollout.server.url={listed}"])
    assert cfg.rollout.server.url == str(listed)  # the file is kept, and read when the run starts
    assert cfg.rollout.server.urls() == ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000"]
    single = load_config(None, ["rollout.server.url=http://127.0.0.1:8000/v1"]).rollout.server
    assert single.url == "http://127.0.0.1:8000/v1" and single.urls() == ["http://127.0.0.1:8000/v1"]
    assert load_config(None, ["rollout.server.url=[http://a:1, http://b:2]"]).rollout.server.urls() == [
        "http://a:1",
        "http://b:2",
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    for value, words in [
        ("[]", "an empty list names no server"),
        ("[http://a:1, 'a:2']", ".*every server must be an http\\(s\\) URL.*'a:2'"),
        ("[http://a:1/v1, http://a:1]", "server\\(s\\) listed twice: http://a:1"),
        ("localhost:8000", "must be an http\\(s\\) URL .* or a file of URLs"),
        (str(empty), "the URL file .* names no server"),
    ]:
        with pytest.raises(ConfigError, match=f"rollout.server.url: {words}"):
            load_config(None, [f"rollout.server.url={value}"])
    bad = tmp_path / "bad.txt"
    bad.write_text("http://a:1\nlocalhost:2\n")
    with pytest.raises(ValueError, match=f"'localhost:2' in {bad}"):
        read_urls(str(bad))
    with pytest.raises(ConfigError, match="rollout.overlap needs rollout.server.url"):
        load_config(None, ["rollout.overlap=true"])
    with pytest.raises(ConfigError, match="rollout.overlap does not go with estimator 'seeupo'"):
        load_config(
            None, ["rollout.overlap=true", "rollout.server.url=http://a:1", "algorithm.estimator=seeupo"]
        )


# ---------------------------------------------------------------------------------------------- the pool
def test_requests_spread_by_load_and_answer_as_one_server(served_model_dir):
    """Least outstanding requests first, ``concurrency`` per server: 12 prompts at concurrency 2 over
    3 servers start 2 on each; the answers equal one server's, whichever server answered (greedy:
    servers in one process share torch's RNG, so seeded sampling is compared across processes below)."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(PolicyServer(served_model_dir, served_model_name=NAME, device="cpu"))
            for _ in range(3)
        ]
        pool = ServerPool([s.url + "/v1" for s in servers], NAME, concurrency=2)
        prompts = maze_prompts(12)
        greedy = SamplingParams(temperature=0, max_new_tokens=6)
        got = pool.generate(prompts, greedy)
        stats = pool.take_stats()
        assert sum(stats["server_requests"].values()) == 12
        assert all(n >= 2 for n in stats["server_requests"].values()), stats
        assert stats["server_failures"] == 0 and stats["failed_servers"] == [] and stats["servers_live"] == 3
        one = OpenAIPolicy(servers[2].url, NAME).generate(prompts, greedy)
        assert [g.response_ids for g in got] == [g.response_ids for g in one]
        assert pool.take_stats()["server_requests"] == dict.fromkeys(pool.urls, 0)  # counters restart


def test_a_server_that_comes_back_gets_the_current_adapter_first(served_model_dir, tmp_path):
    local = HFPolicy.from_pretrained(served_model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    adapter = local.save_adapter(tmp_path / "adapter")
    port = free_port()
    with PolicyServer(served_model_dir, served_model_name=NAME, device="cpu") as alive:
        second = PolicyServer(served_model_dir, served_model_name=NAME, device="cpu", port=port).start()
        pool = ServerPool([alive.url, second.url], NAME, concurrency=2, cooldown_s=60)
        now = [0.0]
        pool.clock = lambda: now[0]
        second.stop()
        pool.sync_adapter(adapter, "policy-a")  # the stopped server is taken out, the other loads it
        assert pool.live == [alive.url]
        assert pool.take_stats()["failed_servers"] == [second.url]
        pool.generate(maze_prompts(4), SEEDED)
        assert pool.take_stats()["server_requests"] == {alive.url: 4, second.url: 0}
        with PolicyServer(served_model_dir, served_model_name=NAME, device="cpu", port=port) as back:
            assert "policy-a" not in OpenAIPolicy(back.url, NAME).models()
            pool.generate(maze_prompts(4), SEEDED)  # still cooling down: not asked
            assert pool.take_stats()["server_requests"][back.url] == 0
            now[0] = 61.0
            pool.generate(maze_prompts(8), SEEDED)
            assert "policy-a" in OpenAIPolicy(back.url, NAME).models()  # loaded before its requests
            assert pool.live == [alive.url, back.url]
            assert pool.take_stats()["server_requests"][back.url] > 0


def test_every_server_down_fails_as_one_server_does(served_model_dir):
    pool = ServerPool(
        [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"], NAME, backoff_s=0
    )
    with pytest.raises(OpenAIServerError, match="all 2 rollout servers are down: .*ConnectError"):
        pool.generate(maze_prompts(2), SEEDED)
    assert pool.take_stats()["server_failures"] == 2


@pytest.mark.slow
def test_a_server_killed_mid_rollout_loses_no_episode(served_model_dir):
    """Three real ``agentrl serve`` processes; one is SIGKILLed right after the first policy call of a
    maze rollout. Every episode finishes, equal to a rollout through one healthy server, and the
    pool names the dead server."""
    with serve_processes(served_model_dir, 3) as procs:
        urls = [u for u, _ in procs]
        pool = ServerPool(urls, NAME, concurrency=2)
        calls = []

        class KillAfterFirstCall:
            def generate(self, prompts, params):
                out = pool.generate(prompts, params)
                if not calls:
                    procs[1][1].kill()
                    procs[1][1].wait(10)
                calls.append(len(prompts))
                return out

            def prompt_ids(self, messages):
                return pool.prompt_ids(messages)

        env_kwargs = {"size": 3, "max_steps": 6}
        common = {"max_turns": 4, "params": SamplingParams(temperature=1.0, max_new_tokens=8, seed=5)}
        tasks, seeds = ["maze-1", "maze-2", "maze-3"], [1, 2, 3]
        envs = [MazeEnv(**env_kwargs) for _ in range(6)]
        groups = rollout(KillAfterFirstCall(), envs, tasks, 2, seeds=seeds, **common)
        assert len(calls) >= 2, "the rollout ended before the kill could matter"
        stats = pool.take_stats()
        assert stats["failed_servers"] == [urls[1]] and stats["server_failures"] == 1
        assert stats["servers_live"] == 2
        trajs = [t for g in groups for t in g]
        assert len(trajs) == 6 and not any("error" in t.info for t in trajs)
        reference = rollout(
            OpenAIPolicy(urls[0], NAME),
            [MazeEnv(**env_kwargs) for _ in range(6)],
            tasks,
            2,
            seeds=seeds,
            **common,
        )
        assert [[s.response_ids for s in t.steps] for g in groups for t in g] == [
            [s.response_ids for s in t.steps] for g in reference for t in g
        ]


@pytest.mark.slow
def test_training_over_a_url_file_survives_a_killed_server(small_maze_model_dir, tmp_path):
    """``rollout.server.url`` as a file of two ``agentrl serve`` processes; one dies after the first
    policy call of iteration 0. Training goes on with every episode, the metrics name the dead
    server, and the records equal a run through the surviving server alone."""
    from tests.test_trainer import _comparable, tiny_run

    with serve_processes(small_maze_model_dir, 2) as procs:
        listed = tmp_path / "servers.txt"
        listed.write_text("".join(f"{u}/v1\n" for u, _ in procs))
        trainer = Trainer.from_config(
            None,
            tmp_path / "run",
            tiny_run(small_maze_model_dir, **{"rollout.server.url": str(listed), "rollout.max_turns": 3}),
        )
        trainer.setup()
        assert isinstance(trainer.sampler, ServerPool)
        generate, calls = trainer.sampler.generate, []

        def kill_after_first(prompts, params):
            out = generate(prompts, params)
            if not calls:
                procs[0][1].kill()
                procs[0][1].wait(10)
            calls.append(1)
            return out

        trainer.sampler.generate = kill_after_first  # type: ignore[method-assign]
        run = trainer.train()
        records = read_metrics(run / "metrics.jsonl")
        assert [r["iteration"] for r in records] == [0, 1]
        assert records[0]["server_failures"] == 1 and records[0]["failed_servers"] == [procs[0][0]]
        assert records[1]["server_failures"] == 0 and records[1]["server_requests"][procs[0][0]] == 0
        assert all(r["episodes"] == 4 and r["errors"] == 0 for r in records)
        alone = tiny_run(
            small_maze_model_dir, **{"rollout.server.url": procs[1][0] + "/v1", "rollout.max_turns": 3}
        )
        from agentrl.trainers import train

        reference = read_metrics(train(None, tmp_path / "alone", alone) / "metrics.jsonl")
        assert "server_requests" not in reference[0]  # one server: the records as before
        pool_keys = ("server_requests", "server_failures", "failed_servers", "servers_live")
        assert [{k: v for k, v in _comparable(r).items() if k not in pool_keys} for r in records] == [
            _comparable(r) for r in reference
        ]


def test_other_processes_sample_with_the_adapter_rank_0_loaded():
    """With several training processes only rank 0 loads the adapter; the others' clients (one
    server or a pool) switch to its name without loading anything (``use_adapter``)."""
    pool = ServerPool(["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"], "base", require_token_ids=False)
    pool.use_adapter("policy")
    assert pool.model == "policy" and [s.policy.model for s in pool.servers] == ["policy", "policy"]
    one = OpenAIPolicy("http://127.0.0.1:9/v1", "base", require_token_ids=False)
    one.use_adapter("policy")
    assert one.model == "policy"
    with pytest.raises(ValueError, match="non-empty"):
        pool.use_adapter("")
