"""Expert-prefix starts (DR-PO / RLGF) and Scaf-GRPO hints on the maze: reset episodes start where the
expert stood, its turns are context and never rows, the share and positions are honoured and seeded,
hints come after K failed iterations, escalate and go once the task is solved, and the counters
survive a checkpoint."""

from __future__ import annotations

import json

import pytest

from agentrl.config import HintsConfig, ResetsConfig, load_config
from agentrl.envs import make
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.rollout import Hint, rollout
from agentrl.trainers.starts import Starts, hint_text, plain_episodes, play_expert, reset_episode_count
from agentrl.types import StepBatch, Trajectory, TrajectoryGroup

MAZE = {"size": 3, "max_steps": 12}
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)


@pytest.fixture(scope="module")
def policy(tiny_model):
    path = tiny_model(layers=1, hidden=32)
    return HFPolicy.from_pretrained(path, lora=LoraSettings(r=2, alpha=4), device="cpu")


def test_reset_episodes_start_at_the_experts_state_and_train_only_their_own_turns(policy) -> None:
    env = make("maze", **MAZE)
    run = play_expert("maze", env, "maze-0", 7, "think_action", 10)
    assert run.success and run.actions == (
        "go north",
        "take red key",
        "go west",
        "go south",
        "go west",
        "go north",
    )
    start = run.start(2, 2, own_group=True, resume="replay", subgoal=None)
    groups = rollout(
        policy,
        [make("maze", **MAZE) for _ in range(3)],
        ["maze-0"],
        4,
        max_turns=5,
        params=PARAMS,
        seeds=[7],
        starts=[start],
    )
    by_id = {g.group_id: g for g in groups}
    assert sorted(by_id) == ["g0", "g0r"]  # the reset episodes form their own group
    assert [t.traj_id for t in by_id["g0"]] == ["g0-0", "g0-1"]
    resets = by_id["g0r"].trajectories
    assert [t.traj_id for t in resets] == ["g0r-0", "g0r-1"]
    fresh = make("maze", **MAZE)
    first_obs, _ = fresh.reset(seed=7, options={"task_id": "maze-0"})
    for t in by_id["g0"]:
        assert t.steps[0].obs == first_obs and "expert_turns" not in t.info
    for t in resets:
        assert t.info["expert_turns"] == 2
        # the first observation is the expert's state after its first 2 actions
        assert t.steps[0].obs == run.observations[2] != first_obs
        assert len(t.steps) <= 5 - 2  # the expert's turns count toward max_turns
        # every step is the policy's own sample; the expert's turns are only in the prompt's history
        for s in t.steps:
            assert s.response_ids and s.response_logprobs is not None
            assert s.response not in run.responses[:2]
        prompt = t.steps[0].prompt[-1]["content"]
        assert "You have taken 2 step(s) so far." in prompt and "[Action 2] take red key" in prompt
        # what the env saw: the seeded reset, the expert's actions, then the policy's
        fresh.reset(seed=7, options={"task_id": "maze-0"})
        seen = [fresh.step(a)[0] for a in [*run.actions[:2], *(s.action for s in t.steps)]]
        assert [s.obs for s in t.steps] == seen[1 : 1 + len(t.steps)]
    batch = StepBatch.from_trajectories(groups)
    assert len(batch) == sum(len(t.steps) for g in groups for t in g)  # no rows for the expert's turns
    assert [t.traj_id for t in plain_episodes(t for g in groups for t in g)] == ["g0-0", "g0-1"]


def test_shared_group_and_chat_prompts(policy) -> None:
    from agentrl.agents import ChatPrompt

    env = make("maze", **MAZE)
    run = play_expert("maze", env, "maze-1", 0, "think_action", 10)
    start = run.start(3, 1, own_group=False, resume="auto", subgoal=None)
    (group,) = rollout(
        policy,
        [make("maze", **MAZE)],
        ["maze-1"],
        2,
        max_turns=6,
        params=PARAMS,
        builder=ChatPrompt(),
        starts=[start],
    )
    assert [t.traj_id for t in group] == ["g0-0", "g0r-0"]
    reset = group.trajectories[1]
    messages = reset.steps[0].prompt
    # the conversation holds the expert's 3 turns as earlier assistant turns, then the current state
    assert [m["content"] for m in messages if m["role"] == "assistant"] == list(run.responses[:3])
    assert run.observations[3] in messages[-1]["content"]


def test_share_and_positions_are_honoured_and_seeded() -> None:
    assert [reset_episode_count(s, 4) for s in (0.1, 0.25, 0.5, 0.75, 0.9)] == [0, 1, 2, 3, 3]
    env = make("maze", **MAZE)
    tasks, seeds = [f"maze-{i}" for i in range(8)], list(range(8))
    lengths = [len(play_expert("maze", env, t, s, "think_action", 20).actions) for t, s in zip(tasks, seeds)]

    def planner(**resets) -> Starts:
        cfg = ResetsConfig(enabled=True, **resets)
        return Starts(
            "maze", env, seed=1, group_size=4, max_turns=20, response_format="think_action", resets=cfg
        )

    uniform = planner(share=0.5)
    starts, hints = uniform.plan(0, tasks, seeds, range(8))
    assert hints is None and all(s is not None for s in starts)
    ks = [len(s.turns) for s in starts]
    assert all(1 <= k <= n - 1 for k, n in zip(ks, lengths)) and len(set(ks)) > 1
    assert all(s.episodes == 2 and s.own_group for s in starts)
    assert [len(s.turns) for s in uniform.plan(0, tasks, seeds, range(8))[0]] == ks  # seeded
    assert [len(s.turns) for s in uniform.plan(1, tasks, seeds, range(8))[0]] != ks  # per iteration
    # a group's draw depends on its index, not on which process plays it
    assert len(uniform.plan(0, tasks[5:], seeds[5:], range(5, 8))[0][0].turns) == ks[5]
    fixed = planner(share=0.75, positions="fixed", turns=[3, 50])
    for s in fixed.plan(0, tasks, seeds, range(8))[0]:
        assert s is not None and len(s.turns) == 3 and s.episodes == 3  # 50 is past every expert's length
        assert s.point.prefix.actions == tuple(a for _, a, _ in s.turns)
    # an expert that does not win within max_turns gives no reset
    short = Starts(
        "maze",
        env,
        seed=1,
        group_size=4,
        max_turns=2,
        response_format="think_action",
        resets=ResetsConfig(enabled=True),
    )
    assert short.plan(0, tasks, seeds, range(8))[0] == [None] * 8


def _group(task: str, wins: list[bool], hinted: int = 0, reset: int = 0) -> TrajectoryGroup:
    trajs = []
    for n, won in enumerate(wins):
        info: dict = {}
        if n < hinted:
            info["hint_tier"] = 1
        elif n >= len(wins) - reset:
            info["expert_turns"] = 1
        trajs.append(Trajectory(task, f"g-{task}", f"{task}-{n}", success=won, info=info))
    return TrajectoryGroup(task, f"g-{task}", trajs)


def test_hints_come_after_k_failures_escalate_and_go_once_solved(policy) -> None:
    env = make("maze", **MAZE)
    hints = HintsConfig(enabled=True, after_failures=2, episodes=1, actions=2)
    starts = Starts(
        "maze", env, seed=0, group_size=3, max_turns=12, response_format="think_action", hints=hints
    )
    run = play_expert("maze", env, "maze-0", 5, "think_action", 12)
    tiers, texts = [], []
    # maze-0 fails 5 iterations in a row (a reset episode's win does not count), then wins with the hint
    history = [[False] * 3, [False, False, True], [False] * 3, [False] * 3, [False] * 3, [True, False, False]]
    for wins in history:
        reset, hint = starts.plan(0, ["maze-0"], [5], [0])
        assert reset is None
        tiers.append(hint[0].tier if hint[0] else 0)
        texts.append(hint[0].text if hint[0] else None)
        record = starts.observe(
            [_group("maze-0", wins, hinted=int(hint[0] is not None), reset=int(wins[-1]))]
        )
    assert tiers == [0, 0, 1, 2, 3, 3]
    assert (
        texts[2] == hint_text("goal", run, "reach the goal") == "reach the goal; an expert needs 6 action(s)."
    )
    assert texts[3] == hint_text("plan", run, "reach the goal") and "go west (x2)" in texts[3]
    assert texts[4] == "an expert's first 2 action(s): go north; take red key."
    assert record["hinted_episodes"] == 1 and record["hint_success_rate"] == 1.0
    assert starts.tier("maze-0") == 0 and starts.state() == {"hint_failures": {}}  # solved: the hint is gone
    # the hint is in the prompts of the first `episodes` episodes only
    (group,) = rollout(
        policy,
        [make("maze", **MAZE)],
        ["maze-0"],
        3,
        max_turns=2,
        params=PARAMS,
        seeds=[5],
        hints=[Hint(texts[4], 3, 1)],
    )
    hinted = [any(texts[4] in str(s.prompt) for s in t.steps) for t in group]
    assert hinted == [True, False, False] and group.trajectories[0].info["hint_tier"] == 3
    assert "Hint: an expert's first 2" in group.trajectories[0].steps[0].prompt[-1]["content"]
    # the counters are what a checkpoint keeps
    starts.observe([_group("maze-1", [False] * 3)])
    again = Starts(
        "maze", env, seed=0, group_size=3, max_turns=12, response_format="think_action", hints=hints
    )
    again.load(json.loads(json.dumps(starts.state())))
    assert again.failures == {"maze-1": 1}
    with pytest.raises(ValueError, match="no hint counters"):
        again.load({})


def test_bad_reset_and_hint_settings_are_refused() -> None:
    bad = [
        (["rollout.resets.enabled=true", "rollout.resets.share=0.25"], "a group of one has no baseline"),
        (
            ["rollout.resets.enabled=true", "rollout.resets.share=0.1", "rollout.resets.group=shared"],
            "no reset episode",
        ),
        (["rollout.resets.enabled=true", "rollout.resets.share=1"], "less than 1"),
        (["rollout.resets.enabled=true", "rollout.resets.positions=fixed"], "turns >= 1"),
        (
            ["rollout.resets.enabled=true", "rollout.resets.positions=fixed", "rollout.resets.turns=[10]"],
            "no turn",
        ),
        (["rollout.resets.enabled=true", "rollout.resets.positions=anywhere"], "uniform"),
        (["rollout.hints.enabled=true", "rollout.hints.after_failures=0"], "greater than or equal to 1"),
        (["rollout.hints.enabled=true", "rollout.hints.tiers=[goal, goal]"], "each named once"),
        (["rollout.hints.enabled=true", "rollout.hints.tiers=[]"], "each named once"),
        (["rollout.hints.enabled=true", "rollout.hints.tiers=[solution]"], "'goal', 'plan' or 'actions'"),
        (["rollout.hints.enabled=true", "rollout.hints.episodes=5"], "normal starts"),
        (
            ["rollout.resets.enabled=true", "rollout.hints.enabled=true", "rollout.hints.episodes=3"],
            "normal starts",
        ),
        (["rollout.hints.enabled=true", "env.name=openenv"], "has none"),
    ]
    for overrides, match in bad:
        with pytest.raises(ValueError, match=match):
            load_config(None, overrides)
    cfg = load_config(None, ["rollout.resets.enabled=true", "rollout.hints.enabled=true"])
    assert cfg.rollout.resets.share == 0.5 and cfg.rollout.hints.tiers == ["goal", "plan", "actions"]


def _train(tmp_path, model_dir, name: str, stop_after: int | None = None, **extra):
    from agentrl.trainers import train
    from tests.test_trainer import tiny_run

    overrides = tiny_run(
        model_dir,
        **{
            "env.kwargs": "{size: 2, n_doors: 1, max_steps: 6, num_tasks: 50}",
            "rollout.group_size": 4,
            "rollout.max_turns": 5,
            "logging.checkpoint_every": 1,
            **extra,
        },
    )
    out = train(None, tmp_path / name, overrides, stop_after=stop_after)
    return out, [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_with_expert_starts(small_maze_model_dir, tmp_path) -> None:
    """Two iterations: half of each group starts on the expert's path, counted apart, never trained
    on expert turns (every row carries the policy's own sampled tokens)."""
    from agentrl.types import read_trajectories

    out, records = _train(
        tmp_path,
        small_maze_model_dir,
        "resets",
        **{"rollout.resets.enabled": "true", "logging.save_trajectories": "true"},
    )
    assert len(records) == 2
    for r in records:
        assert r["episodes"] == 8 and r["reset_episodes"] == 4  # 2 groups x round(0.5 * 4)
        trajs = read_trajectories(out / "trajectories" / f"iter-{r['iteration']:06d}.jsonl")
        reset = [t for t in trajs if "expert_turns" in t.info]
        plain = [t for t in trajs if "expert_turns" not in t.info]
        assert len(reset) == 4 and all(t.group_id.endswith("r") for t in reset)
        assert r["success_rate"] == pytest.approx(sum(t.success for t in plain) / 4)
        assert r["reset_success_rate"] == pytest.approx(sum(t.success for t in reset) / 4)
        assert r["reset_turns_mean"] == pytest.approx(sum(t.info["expert_turns"] for t in reset) / 4)
    saved = json.loads((out / "checkpoints" / "iter-000002" / "state.json").read_text())
    assert "hint_failures" not in saved


@pytest.mark.slow
def test_training_with_hints_resumes_the_counters_exactly(small_maze_model_dir, tmp_path) -> None:
    """Hints after one failed iteration: the counters are in the checkpoint, and a run stopped after
    iteration 1 and resumed gives the uninterrupted run's metrics."""
    extra = {"rollout.hints.enabled": "true", "rollout.hints.after_failures": 1, "env.train_tasks.count": 2}
    _, records = _train(tmp_path, small_maze_model_dir, "full", **extra)
    assert records[0]["hinted_episodes"] == 0 and records[1]["hinted_episodes"] > 0
    stopped, _ = _train(tmp_path, small_maze_model_dir, "resumed", stop_after=1, **extra)
    counters = json.loads((stopped / "checkpoints" / "iter-000001" / "state.json").read_text())[
        "hint_failures"
    ]
    assert counters and all(n >= 1 for n in counters.values())  # the tasks that failed iteration 0
    _, resumed = _train(tmp_path, small_maze_model_dir, "resumed", **extra)

    def same(r: dict) -> dict:
        return {k: v for k, v in r.items() if not k.startswith(("time_", "tokens_per_s"))}

    assert [same(r) for r in resumed] == [same(r) for r in records]


@pytest.mark.parametrize(
    "name, kwargs, fmt",
    [
        ("tools", {"suite": "units", "split": "train", "num_tasks": 4}, "tool_call"),
        ("webshop", {"split": "eval"}, "think_action"),
    ],
)
def test_expert_starts_on_other_envs_with_an_expert(name: str, kwargs: dict, fmt: str) -> None:
    """The planned start replays to the expert's state on a fresh env of the same kind."""
    from agentrl.envs.branching import resume

    env = make(name, **kwargs)
    planner = Starts(
        name, env, seed=0, group_size=4, max_turns=20, response_format=fmt, resets=ResetsConfig(enabled=True)
    )
    tasks = list(env.task_ids())[:2]
    starts, _ = planner.plan(0, tasks, [1, 2], [0, 1])
    for start in starts:
        assert start is not None and start.episodes == 2
        obs, _, mode = resume(make(name, **kwargs), start.point, "replay")
        assert mode == "replay" and obs == start.point.obs
        assert len(start.turns) == len(start.point.prefix.actions) >= 1


@pytest.mark.parametrize("chain", [False, True])
def test_branches_grow_from_normal_starts_only(policy, chain: bool) -> None:
    """Also chain rollouts (SPO-chain): the expert starts get no value continuations and are trained."""
    from agentrl.rollout import Branching

    branching = Branching(at="chain", interval=1, width=1) if chain else Branching(width=1, points=1)
    env = make("maze", **MAZE)
    start = play_expert("maze", env, "maze-2", 0, "think_action", 10).start(
        2, 2, own_group=True, resume="replay", subgoal=None
    )
    groups = rollout(
        policy,
        [make("maze", **MAZE) for _ in range(4)],
        ["maze-2"],
        4,
        max_turns=4,
        params=PARAMS,
        branching=branching,
        starts=[start],
    )
    trajs = [t for g in groups for t in g]
    assert sum("expert_turns" in t.info for t in trajs) == 2
    assert all(t.parent_id in ("g0-0", "g0-1") for t in trajs if t.parent_id is not None)
    assert any(t.parent_id is not None for t in trajs)
    if chain:
        import numpy as np

        from agentrl.credit import estimate
        from agentrl.types import StepBatch

        assert all(t.info["value_only"] is (t.parent_id is not None) for t in trajs)
        batch = StepBatch.from_trajectories(groups)
        adv = estimate("spo_chain", batch).step
        assert np.all(adv[batch.value_only] == 0.0) and np.all(np.isfinite(adv))
