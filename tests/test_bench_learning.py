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
from agentrl.credit import Advantages, available_estimators, estimator_info, register_estimator
from agentrl.eval.learning import (
    BUILTIN_CONFIG,
    FAMILIES,
    credit_learning,
    format_warm_start,
    learning_markdown,
    merge_draws,
    method_overrides,
    paired_differences,
    ranking,
    seeds_needed,
    trainable_estimators,
)
from agentrl.stats import t95, t_mean, wilson
from agentrl.trainers.metrics import read_metrics

# A 2x2 maze without doors in at most 3 moves; SFT on 30 expert plans gives ~40% success under
# sampling, so shared (or not shared) starting points and differing credit show in the numbers.
TINY = {
    "seed": 0,
    "model": {
        "tiny": {"vocab_size": 320, "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1, "corpus_tasks": 5},
        "device": "cpu",
        "torch_threads": 1,
    },
    "lora": {"r": 4, "alpha": 8},
    "env": {
        "name": "maze",
        "kwargs": {"size": 2, "n_doors": 0, "max_steps": 3, "num_tasks": 60},
        "train_tasks": {"start": 0, "count": 20},
        "num_envs": 4,
    },
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
    result = credit_learning(
        out, config=tiny_config, estimators=["grpo", "gigpo"], seeds=[0], iterations=2, progress=lines.append
    )
    return out, result, lines


@pytest.mark.slow
def test_outputs_exist_and_agree_with_the_runs(bench):
    out, result, lines = bench
    assert (out / "learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "learning.json").read_text()) == json.loads(json.dumps(result))
    md = (out / "learning.md").read_text()
    assert (
        "| grpo | think_action SFT |" in md and "| gigpo | think_action SFT |" in md and "iteration 1" in md
    )
    fam = result["families"]["tiny"]
    assert fam["iterations"] == 2 and result["seeds"] == [0] and fam["episodes_per_iteration"] == 6
    for name in ("grpo", "gigpo"):
        m = fam["methods"][name]
        records = read_metrics(out / "tiny" / "seed0" / name / "metrics.jsonl")
        assert [p["iteration"] for p in m["iterations"]] == [0, 1] == [r["iteration"] for r in records]
        for p, r in zip(m["iterations"], records):
            assert p["episodes"] == r["episodes"] == 6
            assert p["successes"] == round(r["success_rate"] * 6)
        summary = json.loads((out / "tiny" / "seed0" / name / "summary.json").read_text())
        assert m["eval_after"]["success_rate"] == pytest.approx(summary["after"]["success_rate"])
        assert m["eval_after"]["episodes"] == 12
        assert f"algorithm.estimator={name}" in m["overrides"]
        assert m["update"] == {"loss": "ppo_token_mean", "clip": [0.2, 0.2]}
    assert "grpo, gigpo: ppo_token_mean clip 0.2 / 0.2." in md
    # one progress line per warm start and per method run, each with the elapsed time
    assert sum("warm start" in x for x in lines) == 1
    assert next(x for x in lines if x.startswith("[")).startswith("[1/2] tiny seed 0 grpo:")
    assert all("elapsed" in x for x in lines if x.startswith("["))


@pytest.mark.slow
def test_every_interval_is_a_wilson_interval_around_its_estimate(bench):
    _, result, _ = bench
    for m in result["families"]["tiny"]["methods"].values():
        for entry in [*m["iterations"], m["eval_before"], m["eval_after"]]:
            iv = wilson(entry["successes"], entry["episodes"])
            assert entry["ci_low"] == pytest.approx(iv.low) and entry["ci_high"] == pytest.approx(iv.high)
            assert entry["ci_low"] <= entry["success_rate"] <= entry["ci_high"]
            assert entry["ci_high"] - entry["ci_low"] > 0.1  # 6 or 12 episodes: a wide interval, not a point


@pytest.mark.slow
def test_methods_start_from_the_same_sft_model(bench):
    out, result, _ = bench
    grpo, gigpo = (
        result["families"]["tiny"]["methods"]["grpo"],
        result["families"]["tiny"]["methods"]["gigpo"],
    )
    sft = str(out / "tiny" / "seed0" / "warm-think_action" / "sft-model")
    for name in ("grpo", "gigpo"):
        cfg = yaml.safe_load((out / "tiny" / "seed0" / name / "config.yaml").read_text())
        assert cfg["model"]["path"] == sft and cfg["sft"]["enabled"] is False
    # the same policy evaluated on the same tasks and seeds, each run on its own
    before = [
        json.loads((out / "tiny" / "seed0" / n / "eval_before.json").read_text()) for n in ("grpo", "gigpo")
    ]
    assert before[0]["episodes"] == 12 and before[0]["success_rate"] == before[1]["success_rate"]
    assert (
        before[0]["reward_mean"] == before[1]["reward_mean"]
        and before[0]["turns_mean"] == before[1]["turns_mean"]
    )
    assert grpo["eval_before"] == gigpo["eval_before"]
    # iteration 0 samples before any update: identical rollouts, so identical numbers
    r0 = [read_metrics(out / "tiny" / "seed0" / n / "metrics.jsonl")[0] for n in ("grpo", "gigpo")]
    for key in ("success_rate", "reward_mean", "turns_mean", "invalid_rate", "rows", "tokens_generated"):
        assert r0[0][key] == r0[1][key], key
    # ... while the credit differs between the methods
    assert (r0[0]["adv_mean"], r0[0]["adv_std"]) != (r0[1]["adv_mean"], r0[1]["adv_std"])


@pytest.mark.slow
def test_a_rerun_reuses_finished_runs_and_refuses_a_changed_config(bench, tiny_config):
    out, result, _ = bench
    lines: list[str] = []
    again = credit_learning(
        out, config=tiny_config, estimators=["grpo", "gigpo"], seeds=[0], iterations=2, progress=lines.append
    )
    assert all("(reused)" in x for x in lines if x.startswith("[") or "warm start" in x)
    assert (
        again["families"]["tiny"]["methods"]["gigpo"]["iterations"]
        == result["families"]["tiny"]["methods"]["gigpo"]["iterations"]
    )
    assert again["compute_seconds"] == pytest.approx(
        result["compute_seconds"]
    )  # the original runs' time, not the rerun's
    # another selection of methods reuses the same warm start (it does not depend on which method comes first)
    lines = []
    only = credit_learning(
        out, config=tiny_config, estimators=["gigpo"], seeds=[0], iterations=2, progress=lines.append
    )
    assert all("(reused)" in x for x in lines if x.startswith("[") or "warm start" in x)
    assert only["families"]["tiny"]["paired"] == {} and only["ranking"] == []  # no grpo: nothing to pair with
    with pytest.raises(ConfigError, match="different config"):
        credit_learning(out, config=tiny_config, estimators=["grpo"], seeds=[0], iterations=1)


def test_method_overrides_make_every_estimator_trainable_on_the_builtin_config(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BUILTIN_CONFIG))
    base = load_config(path)
    # every estimator whose inputs the maze supplies; those that count tool calls need a tool env
    needs_tools = [n for n in available_estimators() if "tool_call" in estimator_info(n).fields]
    assert "hdpo" in needs_tools
    # SPO-chain's Monte-Carlo values need chain rollouts, which cost extra env steps: not in the bench
    needs_chains = [n for n in available_estimators() if "value_only" in estimator_info(n).fields]
    assert "spo_chain" in needs_chains
    assert trainable_estimators() == [
        n for n in available_estimators() if n not in needs_tools and n not in needs_chains
    ]
    assert trainable_estimators("tool_call") == [n for n in available_estimators() if n not in needs_chains]
    for name in trainable_estimators():
        cfg = load_config(path, method_overrides(name, base))
        assert cfg.algorithm.estimator == name
        assert cfg.rollout.response_format == ("hiper" if name == "hiper" else "think_action")
    assert load_config(path, method_overrides("hiper", base)).rollout.max_new_tokens == 24
    assert load_config(path, method_overrides("mt_grpo", base)).algorithm.options["variant"] == "k_turn"
    gigpo_options = load_config(path, method_overrides("gigpo", base)).algorithm.options
    assert gigpo_options == {k: v for k, v in estimator_info("gigpo").options.items() if k != "values"}
    # the rate a method declares at registration, as a multiple of the family's
    assert estimator_info("hiper").benchmark_lr_scale == 0.5
    assert load_config(path, method_overrides("hiper", base)).optim.lr == pytest.approx(0.5 * base.optim.lr)
    rated = [n for n in trainable_estimators() if estimator_info(n).benchmark_lr_scale != 1.0]
    for name in trainable_estimators():
        lr = load_config(path, method_overrides(name, base)).optim.lr
        assert (lr != base.optim.lr) == (name in rated)
    # the family leaves the clip band out, so each method trains with its loss's or its authors' band
    clip = {
        n: load_config(path, method_overrides(n, base)).algorithm.clip_band for n in ("grpo", "seeupo", "a3")
    }
    assert clip == {"grpo": (0.2, 0.2), "seeupo": (3e-4, 4e-4), "a3": (0.1, 0.1)}


def test_bad_estimator_fails_before_training(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match="unknown estimator"):
        credit_learning(tmp_path, config=tiny_config, estimators=["gigpo", "nope"])
    # an estimator reading tool calls cannot train on the maze's think_action responses
    register_estimator("needs_tools", fields=("tool_call",))(
        lambda batch: Advantages(step=np.zeros(len(batch)))
    )
    assert "needs_tools" not in trainable_estimators() and "needs_tools" in trainable_estimators("tool_call")
    with pytest.raises(ConfigError, match=r"cannot supply what \['needs_tools'\] need"):
        credit_learning(tmp_path, config=tiny_config, estimators=["grpo", "needs_tools"])
    assert not (tmp_path / "tiny" / "seed0").exists()


@pytest.mark.slow
def test_cli_learning_part(tmp_path):
    config = tmp_path / "no-sft.yaml"  # no SFT: every method starts from the same fresh tiny model
    config.write_text(yaml.safe_dump({**TINY, "sft": {"enabled": False}}))
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "credit",
            "--part",
            "learning",
            "--config",
            str(config),
            "--iterations",
            "1",
            "--estimators",
            "rloo,grpo",
            "--seed",
            "3",
            "--seeds",
            "1",
            "--jobs",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "learning.json").read_text())
    fam = data["families"]["no-sft"]
    assert list(fam["methods"]) == ["rloo", "grpo"] and data["seeds"] == [3] and fam["iterations"] == 1
    assert (out / "no-sft" / "seed3" / "rloo" / "summary.json").exists() and (out / "learning.png").exists()
    tiny = str(out / "no-sft" / "seed3" / "warm-think_action" / "tiny-model")
    assert all(
        yaml.safe_load((out / "no-sft" / "seed3" / n / "config.yaml").read_text())["model"]["path"] == tiny
        for n in ("rloo", "grpo")
    )
    assert "| rloo | base model |" in res.output and "[2/2] no-sft seed 3 grpo" in res.output
    bad = CliRunner().invoke(
        app, ["bench", "credit", "--part", "learning", "--estimators", "nope", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code != 0 and "unknown estimator" in bad.output
    assert not math.isnan(fam["methods"]["grpo"]["eval_after"]["success_rate"])


def _run(seed: int, before: tuple[int, int], after: tuple[int, int]) -> dict:
    return {"seed": seed, "before": before, "after": after}


def test_paired_differences_are_per_seed_with_a_t_interval():
    runs = {
        "grpo": [_run(0, (50, 100), (60, 100)), _run(1, (40, 100), (45, 100)), _run(2, (70, 100), (72, 100))],
        "gigpo": [
            _run(0, (50, 100), (66, 100)),
            _run(1, (40, 100), (49, 100)),
            _run(2, (70, 100), (80, 100)),
        ],
    }
    paired = paired_differences(runs, "grpo")
    d = paired["gigpo"]
    assert d["diff_per_seed"] == pytest.approx([0.06, 0.04, 0.08])
    assert d["diff"]["mean"] == pytest.approx(0.06)
    half = 4.303 * 0.02 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert d["diff"]["ci_low"] == pytest.approx(0.06 - half) and d["diff"]["ci_high"] == pytest.approx(
        0.06 + half
    )
    assert d["resolved"] is True and d["sd"] == pytest.approx(0.02)
    assert d["gain_per_seed"] == pytest.approx([0.16, 0.09, 0.10])
    assert d["seeds_for_3pt"] == 5  # sd 2 points: 5 seeds give +-2.5 points, 4 give +-3.2
    assert "diff" not in paired["grpo"] and paired["grpo"]["gain"]["mean"] == pytest.approx(
        (0.10 + 0.05 + 0.02) / 3
    )
    # evaluation noise alone: binomial standard errors of the two rates, per seed, averaged
    se0 = math.sqrt(0.66 * 0.34 / 100 + 0.6 * 0.4 / 100)
    assert d["eval_se"] > se0 * 0.9 and d["eval_se"] < se0 * 1.1
    # a difference whose sign flips with the seed is not resolved
    runs["rloo"] = [
        _run(0, (50, 100), (70, 100)),
        _run(1, (40, 100), (35, 100)),
        _run(2, (70, 100), (72, 100)),
    ]
    assert paired_differences(runs, "grpo")["rloo"]["resolved"] is False


def test_ranking_orders_by_mean_difference_over_families():
    def fam(diffs: dict[str, list[float]]) -> dict:
        runs = {"grpo": [_run(s, (50, 100), (50, 100)) for s in range(3)]}
        for name, ds in diffs.items():
            runs[name] = [_run(s, (50, 100), (50 + round(100 * x), 100)) for s, x in enumerate(ds)]
        return {"paired": paired_differences(runs, "grpo")}

    families = {
        "a": fam({"gigpo": [0.05, 0.06, 0.07], "rloo": [-0.02, 0.01, 0.0]}),
        "b": fam({"gigpo": [0.03, 0.04, 0.05], "rloo": [0.0, 0.0, 0.03]}),
    }
    rows = ranking(families)
    assert [r["method"] for r in rows] == ["gigpo", "rloo"]
    assert rows[0]["mean"] == pytest.approx(0.05) and rows[0]["resolved"] and not rows[1]["resolved"]
    assert rows[0]["ci_low"] < 0.05 < rows[0]["ci_high"] and rows[0]["families"] == 2


def test_t_quantiles_and_seeds_needed():
    assert t95(1) == pytest.approx(12.706) and t95(4) == pytest.approx(2.776, abs=1e-3)
    assert t95(40) == pytest.approx(2.021, abs=1e-3) and t95(120) == pytest.approx(1.980, abs=1e-3)
    assert t_mean([0.1]).low == -math.inf and math.isnan(t_mean([]).value)
    with pytest.raises(ValueError):
        t95(0)
    assert seeds_needed(0.0) == 2 and seeds_needed(math.nan) is None
    assert seeds_needed(0.05) == 14  # 2.160 * 5 / sqrt(14) = 2.89 points; 13 seeds give 3.02


@pytest.mark.slow
def test_the_shared_evaluation_before_rl_is_what_a_run_would_measure_itself(bench, tiny_config, tmp_path):
    from agentrl.trainers import train

    out, _result, _ = bench
    shared = json.loads((out / "tiny" / "seed0" / "grpo" / "eval_before.json").read_text())
    warm = json.loads((out / "tiny" / "seed0" / "warm-think_action" / "eval_before.json").read_text())
    assert shared == warm
    # the same run config in a fresh directory evaluates its start itself (stop_after=0: evaluation only)
    cfg = yaml.safe_load((out / "tiny" / "seed0" / "grpo" / "config.yaml").read_text())
    own_dir = train(
        tiny_config,
        tmp_path / "own",
        [
            f"{k}={v}"
            for k, v in (
                ("seed", 0),
                ("model.path", cfg["model"]["path"]),
                ("sft.enabled", "false"),
                ("algorithm.estimator", "grpo"),
            )
        ],
        stop_after=0,
    )
    own = json.loads((own_dir / "eval_before.json").read_text())
    for key in ("success_rate", "episodes", "reward_mean", "turns_mean"):
        assert own[key] == shared[key], key
    # the warm start trained no iteration, so its 'after' is its 'before'
    assert (
        json.loads((out / "tiny" / "seed0" / "warm-think_action" / "summary.json").read_text())["after"]
        == warm
    )


@pytest.mark.slow
def test_draws_train_other_seeds_from_the_same_warm_start_and_a_seed_is_their_mean(bench, tiny_config):
    out, _result, _ = bench
    lines: list[str] = []
    two = credit_learning(
        out,
        config=tiny_config,
        estimators=["grpo", "gigpo"],
        seeds=[0],
        iterations=2,
        draws=2,
        progress=lines.append,
    )
    fresh = [x for x in lines if x.startswith("[") and "(reused)" not in x]
    assert len(fresh) == 2 and all("draw 1" in x for x in fresh)  # draw 0 is the one-draw run, reused
    seed = out / "tiny" / "seed0"
    after = {}
    for name in ("grpo", "gigpo"):
        d0, d1 = load_config(seed / name / "config.yaml"), load_config(seed / f"{name}-draw1" / "config.yaml")
        assert (d0.seed, d1.seed) == (0, 1000) and d1.model.path == d0.model.path
        assert d1.eval_spec() == d0.eval_spec()  # one model, one set of evaluation draws: one "before"
        s0, s1 = (json.loads((seed / d / "summary.json").read_text()) for d in (name, f"{name}-draw1"))
        assert s1["before"] == s0["before"]
        after[name] = (s0["after"]["success_rate"] + s1["after"]["success_rate"]) / 2
        m0, m1 = (read_metrics(seed / d / "metrics.jsonl") for d in (name, f"{name}-draw1"))
        assert [r["loss"] for r in m0] != [r["loss"] for r in m1]  # another training draw
    fam = two["families"]["tiny"]
    assert fam["paired"]["gigpo"]["diff_per_seed"][0] == pytest.approx(after["gigpo"] - after["grpo"])
    assert fam["methods"]["grpo"]["eval_before"]["episodes"] == 12  # the before counted once
    assert fam["methods"]["grpo"]["eval_after"]["episodes"] == 24
    draws = {}
    for name in ("grpo", "gigpo"):
        s0, s1 = (json.loads((seed / d / "summary.json").read_text()) for d in (name, f"{name}-draw1"))
        draws[name] = [s0["after"]["success_rate"], s1["after"]["success_rate"]]
        # the between-draw standard deviation of one seed's two draws (pooled over seeds: one here)
        assert fam["methods"][name]["draw_sd"] == pytest.approx(np.std(draws[name], ddof=1))
    text = learning_markdown(two)
    assert two["draws"] == 2 and "2 RL draws per seed" in text
    assert f"{100 * fam['methods']['grpo']['draw_sd']:.1f} points for grpo" in text
    # a one-draw benchmark has no between-draw spread
    assert all(m["draw_sd"] is None for m in _result["families"]["tiny"]["methods"].values())
    with pytest.raises(ConfigError, match="draws must be at least 1"):
        credit_learning(out, config=tiny_config, estimators=["grpo"], seeds=[0], draws=0)


def test_with_draws_the_spread_splits_into_seeds_and_draws():
    def draws(seed, afters):
        return [
            {"seed": seed, "draw": d, "before": (50, 100), "after": (a, 100)} for d, a in enumerate(afters)
        ]

    # grpo's two draws per seed differ by 4 points, gigpo's by 2: between-draw variances 8e-4 and 2e-4
    runs = {
        "grpo": [*draws(0, [60, 64]), *draws(1, [50, 54]), *draws(2, [70, 74])],
        "gigpo": [*draws(0, [66, 68]), *draws(1, [52, 54]), *draws(2, [80, 82])],
    }
    paired = paired_differences({n: merge_draws(r) for n, r in runs.items()}, "grpo")
    d = paired["gigpo"]
    assert d["diff_per_seed"] == pytest.approx([0.05, 0.01, 0.09])  # differences of the means over draws
    assert d["between_draw_sd"] == pytest.approx(math.sqrt(8e-4 + 2e-4))
    # sd over seeds 0.04: variance 16e-4 = between-seed part + 10e-4 / 2 draws
    assert d["between_seed_sd"] == pytest.approx(math.sqrt(16e-4 - 5e-4))
    by_draws = d["seeds_for_3pt_by_draws"]
    assert list(by_draws) == ["1", "2", "4", "8"]
    assert by_draws["2"] == seeds_needed(0.04) == d["seeds_for_3pt"]  # as run
    assert by_draws["1"] == seeds_needed(math.sqrt(11e-4 + 10e-4))
    assert by_draws["8"] == seeds_needed(math.sqrt(11e-4 + 10e-4 / 8)) <= by_draws["4"] <= by_draws["2"]
    # one draw per seed: nothing to split
    single = paired_differences(
        {n: merge_draws([r for r in rs if r["draw"] == 0]) for n, rs in runs.items()}, "grpo"
    )
    assert "seeds_for_3pt_by_draws" not in single["gigpo"]


def test_merge_draws_sums_the_afters_and_keeps_draw_0s_before():
    runs = [
        {"seed": 1, "draw": 1, "before": (5, 10), "after": (8, 10)},
        {"seed": 0, "draw": 0, "before": (4, 10), "after": (6, 10)},
        {"seed": 1, "draw": 0, "before": (5, 10), "after": (6, 10)},
    ]
    merged = {r["seed"]: r for r in merge_draws(runs)}
    assert merged[1] == {
        "seed": 1,
        "draws": 2,
        "before": (5, 10),
        "after": (14, 20),
        "after_draws": [0.6, 0.8],
    }
    assert merged[0] == {"seed": 0, "draws": 1, "before": (4, 10), "after": (6, 10), "after_draws": [0.6]}


def test_a_saved_config_without_a_newer_default_setting_still_counts(bench, tiny_config):
    out, _result, _ = bench
    saved = out / "tiny" / "seed0" / "grpo" / "config.yaml"
    text = saved.read_text()
    data = yaml.safe_load(text)
    del data["eval"]["seed"]  # as a run saved before eval.seed existed
    try:
        saved.write_text(yaml.safe_dump(data, sort_keys=False))
        lines: list[str] = []
        credit_learning(
            out, config=tiny_config, estimators=["grpo"], seeds=[0], iterations=2, progress=lines.append
        )
        assert all("(reused)" in x for x in lines if x.startswith("["))
        saved.write_text("optim: {lr: -1}\n")
        with pytest.raises(ConfigError, match="no longer loads"):
            credit_learning(out, config=tiny_config, estimators=["grpo"], seeds=[0], iterations=2)
    finally:
        saved.write_text(text)


@pytest.mark.slow
def test_two_jobs_give_the_same_results_as_one(bench, tiny_config, tmp_path):
    _out, result, _ = bench
    lines: list[str] = []
    two = credit_learning(
        tmp_path,
        config=tiny_config,
        estimators=["grpo", "gigpo"],
        seeds=[0],
        iterations=2,
        jobs=2,
        progress=lines.append,
    )
    for name in ("grpo", "gigpo"):
        a, b = result["families"]["tiny"]["methods"][name], two["families"]["tiny"]["methods"][name]
        assert a["iterations"] == b["iterations"] and a["eval_after"] == b["eval_after"], name
    assert two["jobs"] == 2 and sum(x.startswith("[") for x in lines) == 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_builtin_family_validates_for_every_method(family, tmp_path):
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(FAMILIES[family]))
    base = load_config(path)
    assert base.rollout.history_k == 0 and base.env.kwargs["turn_rewards"] is True
    assert (
        base.eval.tasks.start >= base.sft.tasks.start + base.sft.tasks.count
    )  # held-out tasks are not SFT tasks
    assert base.rollout.max_turns == base.env.kwargs["max_steps"]
    for name in trainable_estimators():
        assert load_config(path, method_overrides(name, base)).algorithm.estimator == name
    if family == "maze_long":
        assert base.env.kwargs["size"] == 3 and base.env.kwargs["max_steps"] >= 20


def test_bad_family_and_mixed_sources_are_refused(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match="unknown task family"):
        credit_learning(tmp_path, families=["maze", "nope"])
    with pytest.raises(ConfigError, match="either a config file or built-in families"):
        credit_learning(tmp_path, config=tiny_config, families=["maze"])
    with pytest.raises(ConfigError, match="jobs must be at least 1"):
        credit_learning(tmp_path, config=tiny_config, jobs=0)
    with pytest.raises(ConfigError, match="distinct"):
        credit_learning(tmp_path, config=tiny_config, seeds=[0, 0])


@pytest.mark.slow
def test_hiper_warm_start_has_its_own_tokenizer_and_the_others_keep_theirs(tiny_config, tmp_path):
    from transformers import AutoTokenizer

    # hiper first: its own tiny model must not become the one the think_action methods share
    result = credit_learning(
        tmp_path, config=tiny_config, estimators=["hiper", "grpo"], seeds=[0], iterations=1
    )
    seed = tmp_path / "tiny" / "seed0"
    own = AutoTokenizer.from_pretrained(seed / "warm-hiper" / "tiny-model")
    shared = AutoTokenizer.from_pretrained(seed / "warm-think_action" / "tiny-model")
    assert own.tokenize("<switch>KEEP</switch>") == ["<switch>", "KEEP", "</switch>"]
    assert "KEEP" not in shared.tokenize("<switch>KEEP</switch>")  # the family's tokenizer, as before
    warm = yaml.safe_load((seed / "warm-hiper" / "config.yaml").read_text())
    assert warm["model"]["tiny"]["whole_words"] == ["KEEP", "SWITCH"] and warm["model"]["path"] is None
    assert warm["sft"]["epochs"] == 6  # the family's 6 epochs are more than hiper's floor of 2
    family_lr = load_config(tiny_config).optim.lr
    for name, fmt, lr in (("hiper", "hiper", 0.5 * family_lr), ("grpo", "think_action", family_lr)):
        cfg = yaml.safe_load((seed / name / "config.yaml").read_text())
        assert cfg["model"]["path"] == str(seed / f"warm-{fmt}" / "sft-model")
        assert cfg["optim"]["lr"] == pytest.approx(lr)  # hiper's benchmark_lr_scale
    assert set(result["families"]["tiny"]["methods"]) == {"hiper", "grpo"}
    base = load_config(tiny_config, ["sft.epochs=1"])
    assert format_warm_start("hiper", base) == ["model.tiny.whole_words=[KEEP, SWITCH]", "sft.epochs=2"]
    assert format_warm_start("think_action", base) == []
