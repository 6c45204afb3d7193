"""Credit benchmark, learning part: methods train from one shared warm start, per-iteration Wilson
intervals, the Markdown/JSON/PNG outputs and the CLI path, on a seconds-long maze config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from agentrl.cli import app
from agentrl.config import ConfigError, load_config
from agentrl.credit import ESTIMATORS, Advantages, available_estimators, register_estimator
from agentrl.eval.learning import BUILTIN_CONFIG, credit_learning, method_overrides, trainable_estimators
from agentrl.eval.stats import wilson
from agentrl.trainers.metrics import read_metrics

# A 2x2 maze without doors in at most 3 moves; SFT on 30 expert plans gives ~40% success under
# sampling, so shared (or not shared) starting points and differing credit show in the numbers.
TINY = {
    "seed": 0,
    "model": {"tiny": {"vocab_size": 320, "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1, "corpus_tasks": 5},
              "device": "cpu", "torch_threads": 1},  # fmt: skip
    "lora": {"r": 4, "alpha": 8},
    "env": {"name": "maze", "kwargs": {"size": 2, "n_doors": 0, "max_steps": 3, "num_tasks": 60},
            "train_tasks": {"start": 0, "count": 20}, "num_envs": 4},  # fmt: skip
    "rollout": {"groups": 3, "group_size": 2, "max_turns": 3, "history_k": 1, "max_new_tokens": 6},
    "algorithm": {"minibatch_size": 8, "micro_batch_size": 8},
    "optim": {"iterations": 5, "lr": 0.01},
    "sft": {"enabled": True, "tasks": {"start": 0, "count": 30}, "epochs": 6, "lr": 0.01, "batch_size": 8},
    "eval": {"enabled": True, "tasks": {"start": 40, "count": 12}, "temperature": 1.0},
    "logging": {"tensorboard": False, "checkpoint_every": 100},
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def bench(tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("learning")
    lines: list[str] = []
    result = credit_learning(out, config=tiny_config, estimators=["grpo", "gigpo"], seeds=[0], iterations=2, progress=lines.append)
    return out, result, lines


@pytest.mark.slow
def test_outputs_exist_and_agree_with_the_runs(bench):
    out, result, lines = bench
    assert (out / "learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "learning.json").read_text()) == json.loads(json.dumps(result))
    md = (out / "learning.md").read_text()
    assert "| grpo | think_action SFT |" in md and "| gigpo | think_action SFT |" in md and "iteration 1" in md
    assert result["iterations"] == 2 and result["seeds"] == [0] and result["episodes_per_iteration"] == 6
    for name in ("grpo", "gigpo"):
        m = result["methods"][name]
        records = read_metrics(out / "seed0" / name / "metrics.jsonl")
        assert [p["iteration"] for p in m["iterations"]] == [0, 1] == [r["iteration"] for r in records]
        for p, r in zip(m["iterations"], records):
            assert p["episodes"] == r["episodes"] == 6
            assert p["successes"] == round(r["success_rate"] * 6)
        summary = json.loads((out / "seed0" / name / "summary.json").read_text())
        assert m["eval_after"]["success_rate"] == pytest.approx(summary["after"]["success_rate"])
        assert m["eval_after"]["episodes"] == 12
        assert f"algorithm.estimator={name}" in m["overrides"]
    # one progress line per warm start and per method run, each with the elapsed time
    assert sum("warm start" in x for x in lines) == 1
    assert [x for x in lines if x.startswith("[")][0].startswith("[1/2] seed 0 grpo:")
    assert all("elapsed" in x for x in lines if x.startswith("["))


@pytest.mark.slow
def test_every_interval_is_a_wilson_interval_around_its_estimate(bench):
    _, result, _ = bench
    for m in result["methods"].values():
        for entry in [*m["iterations"], m["eval_before"], m["eval_after"]]:
            iv = wilson(entry["successes"], entry["episodes"])
            assert entry["ci_low"] == pytest.approx(iv.low) and entry["ci_high"] == pytest.approx(iv.high)
            assert entry["ci_low"] <= entry["success_rate"] <= entry["ci_high"]
            assert entry["ci_high"] - entry["ci_low"] > 0.1  # 6 or 12 episodes: a wide interval, not a point


@pytest.mark.slow
def test_methods_start_from_the_same_sft_model(bench):
    out, result, _ = bench
    grpo, gigpo = result["methods"]["grpo"], result["methods"]["gigpo"]
    sft = str(out / "seed0" / "warm-think_action" / "sft-model")
    for name in ("grpo", "gigpo"):
        cfg = yaml.safe_load((out / "seed0" / name / "config.yaml").read_text())
        assert cfg["model"]["path"] == sft and cfg["sft"]["enabled"] is False
    # the same policy evaluated on the same tasks and seeds, each run on its own
    before = [json.loads((out / "seed0" / n / "eval_before.json").read_text()) for n in ("grpo", "gigpo")]
    assert before[0]["episodes"] == 12 and before[0]["success_rate"] == before[1]["success_rate"]
    assert before[0]["reward_mean"] == before[1]["reward_mean"] and before[0]["turns_mean"] == before[1]["turns_mean"]
    assert grpo["eval_before"] == gigpo["eval_before"]
    # iteration 0 samples before any update: identical rollouts, so identical numbers
    r0 = [read_metrics(out / "seed0" / n / "metrics.jsonl")[0] for n in ("grpo", "gigpo")]
    for key in ("success_rate", "reward_mean", "turns_mean", "invalid_rate", "rows", "tokens_generated"):
        assert r0[0][key] == r0[1][key], key
    # ... while the credit differs between the methods
    assert (r0[0]["adv_mean"], r0[0]["adv_std"]) != (r0[1]["adv_mean"], r0[1]["adv_std"])


@pytest.mark.slow
def test_a_rerun_reuses_finished_runs_and_refuses_a_changed_config(bench, tiny_config):
    out, result, _ = bench
    lines: list[str] = []
    again = credit_learning(out, config=tiny_config, estimators=["grpo", "gigpo"], seeds=[0], iterations=2, progress=lines.append)
    assert all("(reused)" in x for x in lines if x.startswith("[") or "warm start" in x)
    assert again["methods"]["gigpo"]["iterations"] == result["methods"]["gigpo"]["iterations"]
    assert again["compute_seconds"] == pytest.approx(result["compute_seconds"])  # the original runs' time, not the rerun's
    with pytest.raises(ConfigError, match="different config"):
        credit_learning(out, config=tiny_config, estimators=["grpo"], seeds=[0], iterations=1)


def test_method_overrides_make_every_estimator_trainable_on_the_builtin_config(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BUILTIN_CONFIG))
    base = load_config(path)
    assert trainable_estimators() == available_estimators()
    for name in trainable_estimators():
        cfg = load_config(path, method_overrides(name, base))
        assert cfg.algorithm.estimator == name
        assert cfg.rollout.response_format == ("hiper" if name == "hiper" else "think_action")
    assert load_config(path, method_overrides("hiper", base)).rollout.max_new_tokens == 24
    assert load_config(path, method_overrides("mt_grpo", base)).algorithm.options == {"variant": "k_turn"}
    assert load_config(path, method_overrides("gigpo", base)).algorithm.options == {}


def test_bad_estimator_fails_before_training(tmp_path, tiny_config, monkeypatch):
    with pytest.raises(ConfigError, match="unknown estimator"):
        credit_learning(tmp_path, config=tiny_config, estimators=["gigpo", "nope"])
    # an estimator reading tool calls cannot train on the maze's think_action responses
    monkeypatch.setattr(ESTIMATORS, "_items", dict(ESTIMATORS._items))  # the registration is undone after the test
    register_estimator("needs_tools", fields=("tool_call",))(lambda batch: Advantages(step=np.zeros(len(batch))))
    assert "needs_tools" not in trainable_estimators() and "needs_tools" in trainable_estimators("tool_call")
    with pytest.raises(ConfigError, match=r"cannot supply what \['needs_tools'\] need"):
        credit_learning(tmp_path, config=tiny_config, estimators=["grpo", "needs_tools"])
    assert not (tmp_path / "seed0").exists()


@pytest.mark.slow
def test_cli_learning_part(tmp_path):
    config = tmp_path / "no-sft.yaml"  # no SFT: every method starts from the same fresh tiny model
    config.write_text(yaml.safe_dump({**TINY, "sft": {"enabled": False}}))
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["bench", "credit", "--part", "learning", "--config", str(config), "--iterations", "1",
                                   "--estimators", "rloo,grpo", "--seed", "3", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / "learning.json").read_text())
    assert list(data["methods"]) == ["rloo", "grpo"] and data["seeds"] == [3] and data["iterations"] == 1
    assert (out / "seed3" / "rloo" / "summary.json").exists() and (out / "learning.png").exists()
    tiny = str(out / "seed3" / "warm-think_action" / "tiny-model")
    assert all(yaml.safe_load((out / "seed3" / n / "config.yaml").read_text())["model"]["path"] == tiny for n in ("rloo", "grpo"))
    assert "| rloo | base model |" in res.output and "[2/2] seed 3 grpo" in res.output
    bad = CliRunner().invoke(app, ["bench", "credit", "--part", "learning", "--estimators", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "unknown estimator" in bad.output
    assert not math.isnan(data["methods"]["grpo"]["eval_after"]["success_rate"])
