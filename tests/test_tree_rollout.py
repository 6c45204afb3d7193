"""Tree rollouts: branches resume their parent's episode at a turn (restore or replay), copy the turns
before it, join the root's group, and their env continues exactly as a fresh replay of their actions."""

from __future__ import annotations

import pytest

from agentrl.envs import make
from agentrl.envs.pool import EnvPool
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.rollout import Branching, rollout
from agentrl.types import StepBatch, Trajectory

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=6, seed=5)
MAZE = {"size": 3, "slip": 0.3, "max_steps": 6}


@pytest.fixture(scope="module")
def policy(tiny_model):
    path = tiny_model(layers=1, hidden=32)
    return HFPolicy.from_pretrained(path, lora=LoraSettings(r=2, alpha=4), device="cpu")


def replayed(traj: Trajectory, seed: int) -> list[str]:
    """The observations a fresh env gives for the trajectory's actions from its seeded reset."""
    env = make("maze", **MAZE)
    obs, _ = env.reset(seed=seed, options={"task_id": traj.task_id})
    seen = [obs]
    for step in traj.steps:
        obs, *_ = env.step(step.action)
        seen.append(obs)
    return seen


def check_tree(groups, group_size: int, width: int) -> list[Trajectory]:
    branches = []
    for group in groups:
        by_id = {t.traj_id: t for t in group.trajectories}
        roots = [t for t in group.trajectories if t.parent_id is None]
        assert len(roots) == group_size
        for t in group.trajectories:
            seed = t.info["seed"]
            # the env each trajectory saw is the one a replay of its own actions gives
            assert [s.obs for s in t.steps] == replayed(t, seed)[: len(t.steps)]
            if t.parent_id is None:
                assert t.branch_turn is None and not any("copy_of" in s.info for s in t.steps)
                continue
            branches.append(t)
            parent, k = by_id[t.parent_id], t.branch_turn
            assert 1 <= k < len(parent.steps) and t.traj_id.startswith(f"{parent.traj_id}.b{k}-")
            for j in range(k):  # copies of the parent's first k turns, naming the sampled step
                assert t.steps[j].response == parent.steps[j].response
                assert t.steps[j].info["copy_of"] == f"{parent.traj_id}#{j}"
            assert all("copy_of" not in s.info for s in t.steps[k:])
        per_root = {}
        for t in group.trajectories:
            if t.parent_id is not None:
                per_root.setdefault((t.parent_id, t.branch_turn), []).append(t)
        assert all(len(v) == width for v in per_root.values())
    return branches


@pytest.mark.parametrize("resume", ["auto", "replay"])
def test_branches_continue_their_parents_episode(policy, resume: str) -> None:
    envs = [make("maze", **MAZE) for _ in range(3)]
    branching = Branching(width=2, points=1, resume=resume)
    groups = rollout(policy, envs, ["maze-1", "maze-2"], 2, max_turns=6, params=PARAMS, branching=branching)
    branches = check_tree(groups, group_size=2, width=2)
    assert branches, "no root was long enough to branch"
    batch = StepBatch.from_trajectories(groups)
    by_traj = {name: k for k, name in enumerate(batch.traj_names)}
    for t in branches:  # a copy and the step it copies share one node id
        rows = batch.traj_idx == by_traj[t.traj_id]
        parent_rows = batch.traj_idx == by_traj[t.parent_id]
        k = t.branch_turn
        assert (batch.node[rows][:k] == batch.node[parent_rows][:k]).all()
        assert len(set(batch.node[rows][k:]) & set(batch.node[parent_rows])) == 0


def test_the_same_seed_gives_the_same_tree(policy) -> None:
    def play():
        envs = [make("maze", **MAZE) for _ in range(2)]
        groups = rollout(
            policy, envs, ["maze-3"], 2, max_turns=6, params=PARAMS, branching=Branching(width=2)
        )
        return [(t.traj_id, [s.response for s in t.steps]) for g in groups for t in g.trajectories]

    assert play() == play()


def test_a_pool_restores_snapshots_taken_in_its_workers(policy) -> None:
    with EnvPool("maze", 2, env_kwargs=MAZE, backend="process") as pool:
        groups = rollout(
            policy, pool, ["maze-4"], 2, max_turns=6, params=PARAMS, branching=Branching(width=1, points=2)
        )
    check_tree(groups, group_size=2, width=1)


def test_fixed_turns_and_the_budget(policy) -> None:
    envs = [make("maze", **MAZE) for _ in range(2)]
    fixed = rollout(
        policy,
        envs,
        ["maze-5"],
        2,
        max_turns=6,
        params=PARAMS,
        branching=Branching(width=1, at="fixed", turns=(2,)),
    )
    for t in fixed[0].trajectories:
        assert t.branch_turn in (None, 2)
    root_steps = sum(len(t) for t in fixed[0].trajectories if t.parent_id is None)
    tight = rollout(
        policy,
        envs,
        ["maze-5"],
        2,
        max_turns=6,
        params=PARAMS,
        branching=Branching(width=1, budget=root_steps),
    )
    assert all(t.parent_id is None for t in tight[0].trajectories)  # the roots used the whole budget


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width and points"),
        ({"at": "entropy"}, "'random' or 'fixed'"),
        ({"at": "fixed"}, "turns >= 1"),
        ({"budget": 0}, "budget"),
        ({"resume": "rewind"}, "resume"),
    ],
)
def test_bad_branching_settings_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Branching(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["spo_tree", "treepo"])
def test_training_on_tree_rollouts(small_maze_model_dir, tmp_path, estimator: str) -> None:
    """Two iterations with branching on: branches are counted, copies are not sampled steps, and the
    shared steps are trained once (fewer trained tokens than rows' tokens)."""
    import json

    from agentrl.trainers import train
    from tests.test_trainer import tiny_run

    overrides = tiny_run(
        small_maze_model_dir,
        **{
            "algorithm.estimator": estimator,
            "rollout.max_turns": 4,
            "rollout.branching.enabled": "true",
            "rollout.branching.width": 2,
        },
    )
    out = train(None, tmp_path / "run", overrides)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["episodes"] == 4 + r["branches"] and r["steps_sampled"] <= r["rows"]
    assert any(r["branches"] > 0 and r["steps_sampled"] < r["rows"] for r in records)


def test_branching_config_is_checked() -> None:
    from agentrl.config import load_config

    with pytest.raises(ValueError, match="turns >= 1"):
        load_config(None, ["rollout.branching.enabled=true", "rollout.branching.at=fixed"])
    cfg = load_config(
        None,
        ["rollout.branching.enabled=true", "rollout.branching.turns=[2, 3]", "rollout.branching.at=fixed"],
    )
    assert cfg.rollout.branching.build() == Branching(at="fixed", turns=(2, 3))
    assert load_config(None, []).rollout.branching.build() is None
