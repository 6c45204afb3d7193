"""Tree rollouts: branches resume their parent's episode at a turn (restore or replay), copy the turns
before it, join the root's group, and their env continues exactly as a fresh replay of their actions."""

from __future__ import annotations

import numpy as np
import pytest

from agentrl.envs import make
from agentrl.envs.pool import EnvPool
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.rollout import Branching, Episode, dynamic_roots, entropy_tree, head_entropy, rollout
from agentrl.types import Step, StepBatch, Trajectory

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
        ({"at": "sideways"}, "'random', 'fixed', 'entropy' or 'chain'"),
        ({"at": "entropy"}, "trajectories >= 1"),
        ({"at": "entropy", "trajectories": 4, "budget": 10}, "leave budget unset"),
        ({"rule": "grpo"}, "rule must be one of arpo, aepo"),
        ({"threshold": 1.5}, "threshold in"),
        ({"at": "fixed"}, "turns >= 1"),
        ({"budget": 0}, "budget"),
        ({"resume": "rewind"}, "resume"),
        ({"at": "chain"}, "interval >= 1"),
        ({"at": "chain", "interval": 0}, "interval >= 1"),
        ({"interval": 2}, "for at: chain"),
        ({"train_branches": True}, "for at: chain"),
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


# ------------------------------------------------------------------ chain rollouts (SPO-chain values)


@pytest.mark.parametrize("interval", [1, 2])
def test_chain_rollouts_continue_every_root_at_each_boundary_for_values_only(policy, interval: int) -> None:
    """Each root is continued from turns interval, 2 interval, ... before its end by width episodes,
    which resume its env there and are marked value-only; the roots are marked trained."""
    envs = [make("maze", **MAZE) for _ in range(3)]
    branching = Branching(at="chain", interval=interval, width=2)
    groups = rollout(policy, envs, ["maze-1", "maze-2"], 2, max_turns=6, params=PARAMS, branching=branching)
    branches = check_tree(groups, group_size=2, width=2)
    assert branches, "no root was long enough for a boundary"
    for group in groups:
        for t in group.trajectories:
            assert t.info["value_only"] is (t.parent_id is not None)
            if t.parent_id is None:
                turns = {b.branch_turn for b in branches if b.parent_id == t.traj_id}
                assert turns == set(range(interval, len(t), interval))
    batch = StepBatch.from_trajectories(groups)
    assert batch.value_only.tolist() == [t.parent_id is not None for g in groups for t in g for _ in t.steps]
    trained = rollout(
        policy,
        envs,
        ["maze-1"],
        2,
        max_turns=6,
        params=PARAMS,
        branching=Branching(at="chain", interval=1, width=1, train_branches=True),
    )
    assert all(t.info["value_only"] is False for t in trained[0].trajectories)
    roots = sum(len(t) for t in trained[0].trajectories if t.parent_id is None)
    tight = rollout(
        policy,
        envs,
        ["maze-1"],
        2,
        max_turns=6,
        params=PARAMS,
        branching=Branching(at="chain", interval=1, width=1, budget=roots),
    )
    assert all(t.parent_id is None for t in tight[0].trajectories)  # the roots used the whole budget


def test_chain_config_is_checked() -> None:
    """at: chain needs an interval; spo_chain needs chain rollouts; an estimator with its own update
    schedule (SeeUPO's turn slots, which do not leave rows out) cannot skip the value-only rows."""
    from agentrl.config import load_config

    chain = ["rollout.branching.enabled=true", "rollout.branching.at=chain"]
    with pytest.raises(ValueError, match="interval >= 1"):
        load_config(None, chain)
    cfg = load_config(None, [*chain, "rollout.branching.interval=3", "algorithm.estimator=spo_chain"])
    assert cfg.rollout.branching.build() == Branching(at="chain", interval=3)
    with pytest.raises(ValueError, match="at: chain"):
        load_config(None, ["algorithm.estimator=spo_chain"])
    seeupo = [*chain, "rollout.branching.interval=3", "algorithm.estimator=seeupo"]
    with pytest.raises(ValueError, match="train_branches"):
        load_config(None, seeupo)
    assert load_config(
        None, [*seeupo, "rollout.branching.train_branches=true"]
    ).rollout.branching.train_branches


@pytest.mark.slow
@pytest.mark.parametrize("train_branches", [False, True])
def test_training_on_chain_rollouts(small_maze_model_dir, tmp_path, train_branches: bool) -> None:
    """Two iterations of SPO-chain: the value continuations are counted (episodes, env steps), and
    only the roots' tokens are trained, unless train_branches trains every sampled step once."""
    import json

    from agentrl.trainers import train
    from agentrl.types import read_trajectories
    from tests.test_trainer import tiny_run

    overrides = tiny_run(
        small_maze_model_dir,
        **{
            "algorithm.estimator": "spo_chain",
            "rollout.max_turns": 4,
            "rollout.branching.enabled": "true",
            "rollout.branching.at": "chain",
            "rollout.branching.interval": 1,
            "rollout.branching.width": 1,
            "rollout.branching.train_branches": str(train_branches).lower(),
            "logging.save_trajectories": "true",
        },
    )
    out = train(None, tmp_path / "run", overrides)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for it, r in enumerate(records):
        trajs = read_trajectories(out / "trajectories" / f"iter-{it:06d}.jsonl")
        value = [t for t in trajs if t.parent_id is not None]
        assert r["episodes"] == 4 + r["branches"] and r["branches"] == len(value)
        assert r["value_episodes"] == (0 if train_branches else len(value))
        own = [s for t in value for s in t.steps if "copy_of" not in s.info]
        assert r["value_steps"] == (0 if train_branches else len(own))
        trained = [s for t in trajs for s in t.steps if "copy_of" not in s.info]
        if not train_branches:
            trained = [s for t in trajs if t.parent_id is None for s in t.steps]
        assert r["trained_tokens"] == sum(len(s.response_ids) for s in trained)
    assert any(r["branches"] > 0 for r in records)


# ------------------------------------------------------------------ entropy-triggered branching


def test_head_entropy_sums_the_top_log_probs_and_the_sampled_one_outside_them() -> None:
    """ARPO's measure: per token, -p log p over the top-k log-probs, plus the sampled token's when it
    is not among them; the first 20 tokens only."""
    import math

    def h(v: float) -> float:
        return -math.exp(v) * v

    got = head_entropy([-0.1, -2.0], [[-0.1, -2.5], [-0.5, -1.0]])
    assert got == pytest.approx(h(-0.1) + h(-2.5) + h(-0.5) + h(-1.0) + h(-2.0))
    assert head_entropy([-0.3] * 30, [[-0.3]] * 30) == pytest.approx(20 * h(-0.3))


def synthetic(traj_id: str, entropies: list[float], group: str = "g0") -> Episode:
    """A played episode whose turns carry the given head entropies (no env: the decisions only read them)."""
    ep = Episode(f"task-{group}", group, traj_id, 0, env_infos=[])
    ep.start("o0", {})
    for h in entropies:
        extend(ep, h)
    return ep


def extend(ep: Episode, h: float) -> None:
    k = len(ep.steps)
    ep.add_step(Step(obs=f"o{k}", action=f"a{k}", info={"head_entropy": h}))
    ep.observe(f"o{k + 1}", {})


def stub_play(script: dict[str, list[float]]):
    """``play`` for entropy_tree: each new episode takes the turns ``script`` gives its id (default one)."""
    played: list[str] = []

    def play(new: list[Episode]) -> None:
        for ep in new:
            played.append(ep.traj_id)
            if not ep.observations:
                ep.start("o0", {})
            for h in script.get(ep.traj_id, [1.0]):
                extend(ep, h)

    return play, played


def test_arpo_branches_where_entropy_rose_and_fills_the_budget_with_fresh_episodes() -> None:
    """threshold 0 makes ARPO's rule deterministic: branch iff u - w dH <= 0, i.e. dH >= u / w. Root B's
    entropy rises at its turn 2, so B branches there (once: width 1); the branch's own first turn is its
    baseline (dH 0: no branch); when every episode has ended, one fresh episode per round fills the task
    to ``trajectories``."""
    a, b = synthetic("g0-0", [1, 1, 1, 1]), synthetic("g0-1", [1, 1, 3, 3])
    play, played = stub_play({"g0-1.b3-0": [7, 7]})
    branching = Branching(at="entropy", width=1, trajectories=4, entropy_weight=10.0, threshold=0.0)
    added = entropy_tree([[a, b]], branching, np.random.default_rng(0), 1.0, play)
    assert [e.traj_id for e in added] == played == ["g0-1.b3-0", "g0-e0"]
    branch, fresh = added
    assert (branch.parent_id, branch.branch_turn) == ("g0-1", 3)
    assert [s.info["copy_of"] for s in branch.steps[:3]] == ["g0-1#0", "g0-1#1", "g0-1#2"]
    assert fresh.parent_id is None and len(fresh.steps) == 1


def test_aepo_damps_a_task_that_branched_in_the_last_round_and_resets_when_another_task_branches() -> None:
    """AEPO: branch iff (u + w dH)(1 - penalty c) >= threshold; penalty 1 and threshold 1 make it
    deterministic (dH > 0 branches unless c >= 1). c counts a task's consecutive rounds that added
    episodes; a round that added some elsewhere resets it, a round that added none anywhere keeps it."""
    b = synthetic("g0-0", [1, 3, 3, 3, 3, 3], group="g0")
    c = synthetic("g1-0", [1, 1, 3, 3, 3, 3], group="g1")
    play, played = stub_play({})
    branching = Branching(
        at="entropy", rule="aepo", width=1, trajectories=10, entropy_weight=10.0, threshold=1.0, penalty=1.0
    )
    entropy_tree([[b], [c]], branching, np.random.default_rng(0), 1.0, play)
    # round 1: g0 branches (c0 -> 1); round 2: g0 damped, g1 branches (c0 -> 0, c1 -> 1);
    # round 3: g0 branches again, g1 damped; round 4: g1 again, g0 damped ...
    branched = [name for name in played if ".b" in name]
    assert branched[:4] == ["g0-0.b2-0", "g1-0.b3-0", "g0-0.b4-0", "g1-0.b5-0"]


def test_aepo_dynamic_roots_from_two_probes() -> None:
    """AEPO's initial rollouts: clamp(int(n sigmoid(0.5 (H_root - H_high))) + 1, 1, n), H_root from a
    capped first response, H_high the mean over a whole probe episode's turns (hand-computed here)."""
    entropies = {"g0-head": [5.0], "g1-head": [1.0], "g0-probe": [1.0, 1.0], "g1-probe": [5.0, 5.0]}
    seen: list[tuple[str, int, int]] = []

    def probe(eps: list[Episode], turns: int, params: SamplingParams) -> None:
        for ep in eps:
            seen.append((ep.traj_id, turns, params.max_new_tokens))
            ep.start("o0", {})
            for h in entropies[ep.traj_id]:
                extend(ep, h)

    got = dynamic_roots(probe, ["t0", "t1"], [0, 1], "", PARAMS, 6, 8, 1.0)
    assert got == [8, 1]  # int(8 * 0.881) + 1 = 8; int(8 * 0.119) + 1 = 1
    assert seen == [("g0-head", 1, 50), ("g1-head", 1, 50), ("g0-probe", 6, 6), ("g1-probe", 6, 6)]
    with pytest.raises(ValueError, match="dynamic_roots .* needs at: entropy"):
        Branching(dynamic_roots=True)


@pytest.mark.parametrize("rule", ["arpo", "aepo"])
def test_entropy_branching_on_the_maze_with_a_real_sampler(policy, rule: str) -> None:
    """The HF sampler returns top log-probs, every sampled turn records its head entropy, each task ends
    with exactly ``trajectories`` episodes (roots, branches, fresh ones), every branch's env continues
    as a replay of its own actions, and the same seed gives the same tree."""

    def play():
        envs = [make("maze", **MAZE) for _ in range(3)]
        branching = Branching(at="entropy", rule=rule, width=1, trajectories=5, dynamic_roots=rule == "aepo")
        return rollout(policy, envs, ["maze-1", "maze-2"], 2, max_turns=6, params=PARAMS, branching=branching)

    groups = play()
    assert any(t.parent_id is not None for g in groups for t in g.trajectories), "nothing branched"
    for group in groups:
        assert len(group.trajectories) == 5
        by_id = {t.traj_id: t for t in group.trajectories}
        for t in group.trajectories:
            assert [s.obs for s in t.steps] == replayed(t, t.info["seed"])[: len(t.steps)]
            assert all(s.info["head_entropy"] >= 0 for s in t.steps)
            if t.parent_id is not None:
                parent = by_id[t.parent_id]
                assert [s.response for s in t.steps[: t.branch_turn]] == [
                    s.response for s in parent.steps[: t.branch_turn]
                ]
    assert [[(t.traj_id, [s.response for s in t.steps]) for t in g.trajectories] for g in groups] == [
        [(t.traj_id, [s.response for s in t.steps]) for t in g.trajectories] for g in play()
    ]


def test_top_logprobs_leave_the_samples_unchanged(policy) -> None:
    """Asking for the top log-probs changes nothing sampled; they come in decreasing order, and the
    sampled token's log-prob is at most the largest."""
    from agentrl.policies.base import MAX_TOP_LOGPROBS

    prompts = [[{"role": "user", "content": "Exits: north"}], [{"role": "user", "content": "Exits: east"}]]
    plain = policy.generate(prompts, PARAMS)
    with_top = policy.generate(
        prompts, SamplingParams(temperature=1.0, max_new_tokens=6, seed=5, top_logprobs=3)
    )
    assert [g.response_ids for g in plain] == [g.response_ids for g in with_top]
    assert all(g.top_logprobs is None for g in plain)
    for g in with_top:
        assert g.top_logprobs is not None and len(g.top_logprobs) == len(g.response_ids)
        for chosen, top in zip(g.logprobs, g.top_logprobs):
            assert len(top) == 3 and top == sorted(top, reverse=True) and chosen <= top[0] + 1e-6
    with pytest.raises(ValueError, match="top_logprobs must be an int"):
        SamplingParams(top_logprobs=MAX_TOP_LOGPROBS + 1)


@pytest.mark.slow
def test_training_with_entropy_branching(small_maze_model_dir, tmp_path) -> None:
    """Two iterations of GRPO on ARPO-style trees from the config: each task's group holds
    ``trajectories`` episodes, and the branches' shared steps are trained once."""
    import json

    from agentrl.trainers import train
    from tests.test_trainer import tiny_run

    overrides = tiny_run(
        small_maze_model_dir,
        **{
            "algorithm.estimator": "grpo",
            "rollout.max_turns": 4,
            "rollout.branching.enabled": "true",
            "rollout.branching.at": "entropy",
            "rollout.branching.width": 1,
            "rollout.branching.trajectories": 4,
        },
    )
    out = train(None, tmp_path / "run", overrides)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["episodes"] == 2 * 4 for r in records)
    assert all(r["steps_sampled"] <= r["rows"] for r in records)


def test_entropy_branching_without_entropies_is_a_clear_error(policy) -> None:
    """A turn without ``head_entropy`` (a sampler that gave no top log-probs), a policy that does not
    say its vocabulary size, and picked instead of generated actions are refused, with what to do."""
    bare = synthetic("g0-0", [1.0, 1.0])
    for step in bare.steps:
        step.info.pop("head_entropy")
    play, played = stub_play({})
    branching = Branching(at="entropy", width=1, trajectories=3)
    with pytest.raises(ValueError, match="has no head_entropy: branching at entropy needs a sampler"):
        entropy_tree([[bare]], branching, np.random.default_rng(0), 1.0, play)
    assert played == []  # nothing was played on a failed decision

    class NoVocab:
        def __getattr__(self, name):
            return getattr(policy, name)

        vocab_size = None

    envs = [make("maze", **MAZE)]
    with pytest.raises(ValueError, match="set the branching's vocab_size"):
        rollout(NoVocab(), envs, ["maze-1"], 1, max_turns=2, params=PARAMS, branching=branching)
    with pytest.raises(ValueError, match="needs action_choice 'generate'"):
        rollout(
            policy,
            envs,
            ["maze-1"],
            1,
            max_turns=2,
            params=PARAMS,
            branching=branching,
            action_choice="admissible",
        )


@pytest.mark.slow
def test_chain_training_killed_mid_run_resumes_exactly(small_maze_model_dir, tmp_path) -> None:
    """The chain's continuations are drawn from the run's seeds alone: a run killed (SIGKILL) after a
    checkpoint resumes to the uninterrupted run's metrics and adapter weights."""
    from agentrl.trainers import train
    from agentrl.trainers.metrics import read_metrics
    from tests.test_trainer import _comparable, kill_during, tiny_run

    overrides = tiny_run(
        small_maze_model_dir,
        **{
            "optim.iterations": 3,
            "algorithm.estimator": "spo_chain",
            "rollout.max_turns": 4,
            "rollout.branching.enabled": "true",
            "rollout.branching.at": "chain",
            "rollout.branching.interval": 1,
            "rollout.branching.width": 1,
        },
    )
    full_dir = train(None, tmp_path / "full", overrides)
    full = read_metrics(full_dir / "metrics.jsonl")
    assert any(r["value_episodes"] > 0 for r in full)
    killed = tmp_path / "killed"
    assert len(kill_during(killed, overrides, 2)) < 3
    resumed = read_metrics(train(None, killed, overrides) / "metrics.jsonl")
    assert [_comparable(r) for r in resumed] == [_comparable(r) for r in full]
    name = "checkpoints/iter-000003/adapter/adapter_model.safetensors"
    assert (killed / name).read_bytes() == (full_dir / name).read_bytes()
