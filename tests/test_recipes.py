"""The recipe grid configs/recipes/<env>/<method>.yaml: every file loads, carries the papers' defaults,
agrees with its siblings, and one recipe per env trains an iteration on CPU with the tiny model.

The grid: every env x the core methods, plus each method from the literature on the envs it fits
(its card's "Fits"), and BFCL (grpo as the baseline of its tool-use methods)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agentrl.config import TrainConfig, load_config
from agentrl.credit import estimator_info
from agentrl.envs import make
from agentrl.trainers import train

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "recipes"
ENVS = ("alfworld", "webshop", "search", "tools")
METHODS = ("grpo", "gigpo", "hgpo", "salt", "mt_grpo", "hiper", "seeupo")
OUTCOME_AND_TURN = ("g_ra", "mars", "ngrpo", "a_grae", "krpo", "spo", "ktae")  # fit every env
LITERATURE = {
    "alfworld": ("a3", *OUTCOME_AND_TURN),
    "webshop": ("a3", *OUTCOME_AND_TURN),
    "search": ("hdpo", *OUTCOME_AND_TURN),
    "tools": ("a3", "hdpo", *OUTCOME_AND_TURN),
}
BFCL = ("grpo", "a3", "hdpo", "matchtir")
GRID = {
    **{env: (*METHODS, *LITERATURE[env]) for env in ENVS},
    "bfcl": BFCL,
}
CELLS = [(env, method) for env, methods in GRID.items() for method in methods]
GAMMA_095 = ("gigpo", "hgpo")  # the papers' gamma 0.95; HiPER's script keeps verl's gamma 1
GAMMA_OWN = {"hiper": 1.0, "mars": 1.0, "matchtir": 0.9}  # HiPER: verl's 1; MARS: 1; MatchTIR's code: 0.9


def recipe(env: str, method: str) -> TrainConfig:
    return load_config(RECIPES / env / f"{method}.yaml")


def test_the_grid_is_complete_and_nothing_else_is_there() -> None:
    found = sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.yaml"))
    assert found == sorted(f"{e}/{m}.yaml" for e, m in CELLS)


@pytest.mark.parametrize(("env", "method"), CELLS)
def test_recipe_has_the_papers_defaults(env: str, method: str) -> None:
    cfg = recipe(env, method)
    text = (RECIPES / env / f"{method}.yaml").read_text()
    assert f"agentrl train configs/recipes/{env}/{method}.yaml" in text
    assert cfg.env.name == env and cfg.algorithm.estimator == method
    assert (
        cfg.model.path == "Qwen/Qwen2.5-1.5B-Instruct"
        and cfg.model.device == "cuda"
        and cfg.model.dtype == "bfloat16"
    )
    assert (cfg.lora.r, cfg.lora.alpha) == (64, 64)
    assert (
        cfg.rollout.groups,
        cfg.rollout.group_size,
        cfg.rollout.temperature,
        cfg.rollout.max_new_tokens,
    ) == (16, 8, 1.0, 512)
    assert cfg.rollout.prompt == "step" and cfg.optim.lr == 1e-5 and cfg.optim.iterations == 150
    assert cfg.rollout.history_k == 2  # every env keeps its task on the prompt's "Task:" line (info["task"])
    if "--history-k" in text:  # the header's eval command prompts as training does
        r = cfg.rollout
        assert (
            f"--max-turns {r.max_turns} --history-k {r.history_k} --response-format {r.response_format} "
            in text
        )
    assert not cfg.sft.enabled and not cfg.sft.full_finetune
    options = estimator_info(method).options
    if method in GAMMA_095:
        assert cfg.algorithm.options["gamma"] == 0.95
    elif "gamma" in options:
        assert cfg.algorithm.options["gamma"] == GAMMA_OWN[method]
    if method == "gigpo":
        assert cfg.algorithm.options["omega"] == 1.0
        assert cfg.algorithm.options["mode"] == ("mean" if env == "webshop" else "mean_std")
    if method == "hgpo":
        assert cfg.algorithm.options["history_length"] == cfg.rollout.history_k
    expected_format = (
        "hiper" if method == "hiper" else "tool_call" if env in ("tools", "bfcl") else "think_action"
    )
    assert cfg.rollout.response_format == expected_format
    if method == "seeupo":
        assert cfg.algorithm.resolved_loss == "gspo" and cfg.algorithm.kl_coef == 0.002
        assert cfg.algorithm.clip_band == (3e-4, 4e-4)
    else:
        assert cfg.algorithm.kl_coef == 0.01


@pytest.mark.parametrize("env", GRID)
def test_recipes_of_an_env_differ_only_in_the_method(env: str) -> None:
    """Same model, env, prompt, budget and evaluation for every method: a fair comparison."""
    base = recipe(env, "grpo").model_dump(mode="json")
    for method in GRID[env][1:]:
        cfg = recipe(env, method).model_dump(mode="json")
        for section in ("seed", "model", "lora", "env", "optim", "sft", "eval", "logging"):
            assert cfg[section] == base[section], (method, section)
        rollout = {**cfg["rollout"], "response_format": base["rollout"]["response_format"]}
        assert rollout == base["rollout"], method
    assert {recipe(env, m).out_dir for m in GRID[env]} == {
        f"runs/{env}-{m.replace('_', '-')}" for m in GRID[env]
    }


def test_recipe_task_ranges_fit_the_envs_and_eval_is_held_out() -> None:
    """Train and eval ranges lie inside the split's task ids and do not overlap."""
    expected = {"alfworld": 50, "webshop": 15, "search": 5, "tools": 8, "bfcl": 24}
    for env in GRID:
        cfg = recipe(env, "grpo")
        assert cfg.rollout.max_turns == expected[env]
        train_end = cfg.env.train_tasks.start + cfg.env.train_tasks.count
        if cfg.eval.enabled:
            assert (
                cfg.eval.tasks.start >= train_end
                and cfg.eval.tasks.count == 128
                and cfg.eval.temperature == 0.4
            )
        if env == "alfworld":
            assert train_end == 60 and not cfg.eval.enabled  # the default generated set: 10 games x 6 types
            continue
        n_tasks = len(make(env, **cfg.env.kwargs).task_ids())
        assert train_end <= n_tasks
        if cfg.eval.enabled:
            assert cfg.eval.tasks.start + cfg.eval.tasks.count == n_tasks


@pytest.mark.parametrize(("env", "method"), CELLS)
def test_recipe_options_run_on_a_batch(env: str, method: str) -> None:
    """The options' values (not only their names, which the config checks) are valid for the estimator:
    it runs with them on a synthetic batch that carries every optional column."""
    from agentrl.credit import estimate
    from agentrl.eval.synthetic_rollouts import synthetic_batch, synthetic_response_ids

    cfg = recipe(env, method)
    batch = synthetic_batch(3, n=4, max_steps=6, seed=1)
    if "response_ids" in estimator_info(method).fields:  # token ids for the per-token methods
        batch = dataclasses.replace(batch, response_ids=synthetic_response_ids(batch, seed=1))
    info = estimator_info(method)
    options = dict(cfg.algorithm.options)
    if info.stateful:
        options["state"] = {}
    if info.value_heads:  # an untrained critic: zeros from every head
        options["values"] = info.critic_input({h: np.zeros(len(batch)) for h in info.value_heads})
    if info.wants_drift(options):  # the trainer's policy drift: 0 on every task's first visit
        options["drift"] = np.zeros(len(batch))
    adv = estimate(method, batch, **options)
    assert adv.step.shape == (len(batch),) and np.isfinite(adv.step).all()


# ----------------------------------------------------------------------------- one iteration on CPU

TINY = [
    "model.path=null",
    "model.device=cpu",
    "model.dtype=null",
    "model.gradient_checkpointing=false",
    "model.torch_threads=1",
    "model.tiny.vocab_size=320",
    "model.tiny.layers=1",
    "model.tiny.hidden=32",
    "model.tiny.heads=2",
    "model.tiny.kv_heads=1",
    "model.tiny.corpus_tasks=3",
    "lora.r=4",
    "lora.alpha=8",
    "env.num_envs=4",
    "rollout.groups=2",
    "rollout.group_size=2",
    "rollout.max_turns=3",
    "rollout.max_new_tokens=8",
    "optim.iterations=1",
    "algorithm.minibatch_size=8",
    "algorithm.micro_batch_size=4",
    "eval.tasks.count=2",
    "eval.max_turns=2",
    "logging.tensorboard=false",
]


@pytest.fixture()
def restore_threads():
    """model.torch_threads sets torch's global thread count; give it back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def one_iteration(env: str, method: str, run: Path, *extra: str) -> dict:
    out = train(RECIPES / env / f"{method}.yaml", run, [*TINY, *extra])
    (record,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["iteration"] == 0 and record["episodes"] == 4 and record["rows"] >= 4
    assert math.isfinite(record["loss"]) and record["trained_tokens"] > 0
    assert load_config(out / "config.yaml").model.path is None
    assert (out / "checkpoints" / "iter-000001" / "adapter").is_dir()
    return record


@pytest.mark.parametrize(
    ("env", "method"),
    [
        pytest.param("webshop", "hiper", marks=pytest.mark.slow),  # ~15 s
        ("search", "mt_grpo"),
        ("tools", "seeupo"),
        ("search", "hdpo"),
        pytest.param("bfcl", "matchtir", marks=pytest.mark.slow),
    ],
)
def test_a_recipe_per_env_trains_one_iteration_on_cpu(
    env: str, method: str, tmp_path: Path, restore_threads
) -> None:
    # the prompt lists every tool schema; the tiny model (2048 positions, a 320-token vocabulary, so
    # about a token per byte) holds one suite's schemas, not all three suites' (~3.2k characters)
    extra = ["env.kwargs.suite=calculator", "env.train_tasks.count=200"] if env == "tools" else []
    if env == "bfcl":  # every API's schema: ~7.6k tokens at about a token per byte
        extra = ["model.tiny.max_positions=8192"]
    one_iteration(env, method, tmp_path / "run", *extra)
    if recipe(env, method).eval.enabled:
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["before"]["episodes"] == summary["after"]["episodes"] == 2


@pytest.mark.slow
def test_the_alfworld_recipe_trains_one_iteration_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_threads
) -> None:
    from agentrl.envs.alfworld import generate_games

    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path / "cache"))
    games = tmp_path / "games"
    generate_games(
        games, per_type=1, splits=["train"], progress=False, task_types=["pick_and_place_simple"], workers=1
    )
    one_iteration(
        "alfworld", "gigpo", tmp_path / "run", f"env.kwargs.data_dir={games}", "env.train_tasks.count=1"
    )


def test_the_hdpo_recipes_train_the_papers_two_clipped_terms(tmp_path: Path, restore_threads) -> None:
    """HDPO's recipes use ``ppo_channels`` (L_clip(A_acc) + w L_clip(A_eff)); one CPU iteration hands
    the loss both channels with the weights of the run's options."""
    from agentrl.trainers.losses import LOSSES

    for env in ("search", "tools", "bfcl"):
        assert recipe(env, "hdpo").algorithm.resolved_loss == "ppo_channels"
    seen = []
    original = LOSSES.get("ppo_channels")

    def spy(x):
        seen.append([w for w, _ in x.channels])
        return original(x)

    LOSSES.register("ppo_channels", spy, overwrite=True)  # the autouse fixture puts the original back
    one_iteration("search", "hdpo", tmp_path / "run", "algorithm.options.eff_weight=0.5")
    assert seen and all(w == [1.0, 0.5] for w in seen)
