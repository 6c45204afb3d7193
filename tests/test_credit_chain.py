"""SPO-chain: segment advantages from the Monte-Carlo values of chain rollouts, by hand; value-only
continuations are never trained and leave the roots' advantages alone."""

from __future__ import annotations

import numpy as np
import pytest

from agentrl.credit import Advantages, MissingInputError, estimate
from agentrl.trainers.schedule import merge_copies
from agentrl.types import Step, StepBatch, Trajectory


def traj(
    tid: str,
    actions: str,
    outcome: float,
    parent: str | None = None,
    turn: int | None = None,
    *,
    group: str = "g",
    value_only: bool | None = None,
    invalid: tuple[int, ...] = (),
    truncated: bool = False,
) -> Trajectory:
    steps = []
    for k, a in enumerate(actions):
        info = {"copy_of": f"{parent}#{k}"} if parent is not None and k < turn else {}
        steps.append(Step(obs=f"o{k}", action=a, valid=k not in invalid, info=info))
    mark = (parent is not None) if value_only is None else value_only
    return Trajectory(
        "t" + group,
        group,
        tid,
        steps,
        outcome=outcome,
        truncated=truncated,
        terminated=not truncated,
        info={"value_only": mark},
        parent_id=parent,
        branch_turn=turn,
    )


def chain_batch(**kw) -> StepBatch:
    """Group g, interval 1, width 2: root a (x y z; R=1) continued after turn 1 by a.b1-0 (R=0) and
    a.b1-1 (R=1), after turn 2 by a.b2-0 and a.b2-1 (R=1 both); root d (q; R=0, truncated) is shorter
    than the interval: no continuation. Group e (interval 2): root e (5 turns, R=1) alone in its group,
    continued after turn 2 (R=1, 0) and turn 4 (R=1, 1)."""
    return StepBatch.from_trajectories(
        [
            traj("a", "xyz", 1.0, **kw),
            traj("a.b1-0", "xuv", 0.0, "a", 1),
            traj("a.b1-1", "xyw", 1.0, "a", 1),
            traj("a.b2-0", "xyz", 1.0, "a", 2),
            traj("a.b2-1", "xyzz", 1.0, "a", 2),
            traj("d", "q", 0.0, truncated=True),
            traj("e", "abcde", 1.0, group="e"),
            traj("e.b2-0", "abf", 1.0, "e", 2, group="e"),
            traj("e.b2-1", "abgh", 0.0, "e", 2, group="e"),
            traj("e.b4-0", "abcdi", 1.0, "e", 4, group="e"),
            traj("e.b4-1", "abcdj", 1.0, "e", 4, group="e"),
        ]
    )


def by_traj(batch: StepBatch, adv: np.ndarray) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, a in zip(batch.traj_id, adv):
        out.setdefault(name, []).append(float(a))
    return out


def test_spo_chain_by_hand():
    """a: V(start) = group mean of the roots (1 + 0) / 2 = 0.5, V(1) = mean(0, 1) = 0.5, V(2) = 1,
    V(end) = 1: turn 0 gets 0.5 - 0.5 = 0, turn 1 gets 1 - 0.5 = 0.5, turn 2 gets 1 - 1 = 0.
    d (truncated, shorter than the interval): one segment, its own outcome minus the start: -0.5.
    e, alone in its group: V(start) = its outcome 1, V(2) = 0.5, V(4) = 1: turns 0-1 get -0.5, turns
    2-3 get 0.5, turn 4 gets 0. Every value-only row gets 0."""
    batch = chain_batch()
    got = by_traj(batch, estimate("spo_chain", batch, invalid_penalty=0.0).step)
    assert got["a"] == pytest.approx([0.0, 0.5, 0.0])
    assert got["d"] == pytest.approx([-0.5])
    assert got["e"] == pytest.approx([-0.5, -0.5, 0.5, 0.5, 0.0])
    for name, a in got.items():
        if "." in name:
            assert a == [0.0] * len(a), name


def test_spo_chain_options_by_hand():
    """include_root: V(1) = (0 + 1 + 1) / 3 = 2/3, V(2) = 1, so a: 2/3 - 0.5, 1 - 2/3, 0; e: V(2) =
    (1 + 0 + 1) / 3, V(4) = 1. start=others: a's start is d's outcome 0 and d's is a's 1; e, alone,
    keeps its own. group_std divides by the std of the group's roots: sqrt(0.5) for g, eps for e."""
    batch = chain_batch()
    got = by_traj(batch, estimate("spo_chain", batch, include_root=True, invalid_penalty=0.0).step)
    assert got["a"] == pytest.approx([2 / 3 - 0.5, 1 / 3, 0.0])
    assert got["e"] == pytest.approx([2 / 3 - 1, 2 / 3 - 1, 1 / 3, 1 / 3, 0.0])
    got = by_traj(batch, estimate("spo_chain", batch, start="others", invalid_penalty=0.0).step)
    assert got["a"] == pytest.approx([0.5, 0.5, 0.0]) and got["d"] == pytest.approx([-1.0])
    assert got["e"] == pytest.approx([-0.5, -0.5, 0.5, 0.5, 0.0])
    plain = estimate("spo_chain", batch, invalid_penalty=0.0).step
    scaled = estimate("spo_chain", batch, normalize="group_std", eps=1e-3, invalid_penalty=0.0).step
    expected = np.where(batch.group_id == "g", plain / (np.sqrt(0.5) + 1e-3), plain / 1e-3)
    np.testing.assert_allclose(scaled, expected)
    with pytest.raises(ValueError, match="start"):
        estimate("spo_chain", batch, start="prompt")
    with pytest.raises(ValueError, match="normalize"):
        estimate("spo_chain", batch, normalize="rank")


def test_equal_outcomes_give_no_credit_and_invalid_turns_pay_the_penalty():
    trajs = [
        traj("a", "xyz", 2.0, invalid=(1,)),
        traj("a.b1-0", "xuv", 2.0, "a", 1, invalid=(2,)),
        traj("a.b2-0", "xyz", 2.0, "a", 2),
        traj("d", "qr", 2.0),
    ]
    batch = StepBatch.from_trajectories(trajs)
    for kw in ({}, {"include_root": True}, {"start": "others"}):
        np.testing.assert_allclose(estimate("spo_chain", batch, invalid_penalty=0.0, **kw).step, 0.0)
    got = by_traj(batch, estimate("spo_chain", batch, invalid_penalty=0.25).step)
    assert got["a"] == [0.0, -0.25, 0.0] and got["d"] == [0.0, 0.0]
    assert got["a.b1-0"] == [0.0, 0.0, 0.0]  # its invalid turn is not trained: no penalty either


def test_singleton_roots_without_continuations_get_no_credit():
    batch = StepBatch.from_trajectories(
        [traj("a", "xy", 1.0, group="a"), traj("b", "x", 0.0, group="b")]  # no boundary: one segment
    )
    np.testing.assert_allclose(estimate("spo_chain", batch, invalid_penalty=0.0).step, 0.0)


def test_trained_branches_are_ordinary_leaves():
    """With train_branches the continuations are not value-only: a continuation from boundary b
    trains its own turns on R_c - V(b) and its copied turns on the root's advantages."""
    trajs = [traj("a", "xyz", 1.0), traj("d", "q", 0.0)]
    trajs += [
        traj("a.b1-0", "xuv", 0.0, "a", 1, value_only=False),
        traj("a.b1-1", "xyw", 1.0, "a", 1, value_only=False),
    ]
    batch = StepBatch.from_trajectories(trajs)
    adv = estimate("spo_chain", batch, invalid_penalty=0.0)
    got = by_traj(batch, adv.step)
    # V(start) 0.5, V(1) = 0.5, V(end) = 1: a's turn 0 gets 0, turns 1 and 2 get 0.5 (one segment)
    assert got["a"] == pytest.approx([0.0, 0.5, 0.5])
    assert got["a.b1-0"] == pytest.approx([0.0, -0.5, -0.5])
    assert got["a.b1-1"] == pytest.approx([0.0, 0.5, 0.5])
    merged, trained = merge_copies(batch, adv)
    assert trained.tolist() == [True] * 3 + [True] + [False, True, True] * 2
    np.testing.assert_allclose(merged.step, adv.step)  # the copies already agree


def test_value_only_rows_are_not_trained_and_do_not_dilute_the_shared_steps():
    batch = chain_batch()
    adv = Advantages(
        step=np.arange(len(batch), dtype=np.float64), token=[np.full(2, float(r)) for r in range(len(batch))]
    )
    merged, trained = merge_copies(batch, adv)
    roots = np.isin(batch.traj_id, ["a", "d", "e"])
    assert trained.tolist() == roots.tolist()
    # a root's rows keep their own advantages; the copies of them take those, not a mean with zeros
    np.testing.assert_array_equal(merged.step[roots], adv.step[roots])
    copies = batch.node != np.arange(len(batch))
    np.testing.assert_array_equal(merged.step[copies], adv.step[batch.node[copies]])
    assert [float(t[0]) for t in merged.token] == merged.step.tolist()
    # without any value-only trajectory the rule is the tree one (the first row of each node trained)
    plain = StepBatch.from_trajectories([traj("a", "xy", 1.0, value_only=False), traj("d", "q", 0.0)])
    assert merge_copies(plain, Advantages(step=np.zeros(3)))[1] is None


def test_a_batch_without_chain_rollouts_is_refused_with_the_config_that_gives_them():
    from agentrl.eval.synthetic_rollouts import synthetic_batch

    with pytest.raises(MissingInputError, match="at: chain"):
        estimate("spo_chain", synthetic_batch(2, n=4, max_steps=4, seed=0))


def test_chain_fidelity_counts_the_value_steps_and_scores_only_the_roots():
    from agentrl.envs.maze import MazeEnv
    from agentrl.eval.fidelity import improved_policy
    from agentrl.eval.tree_fidelity import parse_chains, sample_tree_group, tree_fidelity

    env = MazeEnv(size=3, n_doors=1, slip=0.1, max_steps=20)
    policy = improved_policy(env, "maze-0", 0.95)
    values = env.exact_values("maze-0", policy, 0.95)
    trajs = sample_tree_group(env, "maze-0", "g", 2, 1, 1, policy, values, 0, np.random.default_rng(0), 2)
    roots = [t for t in trajs if t.parent_id is None]
    for root in roots:
        turns = sorted(t.branch_turn for t in trajs if t.parent_id == root.traj_id)
        assert turns == list(range(2, len(root), 2)) and root.info == {"value_only": False}
    assert all(t.info == {"value_only": True} for t in trajs if t.parent_id is not None)
    rows = tree_fidelity(
        tasks=3, resamples=2, flat_sizes=(4,), chains=((2, 2, 1),), estimators=("grpo", "spo_chain")
    )
    by = {(r.sampling, r.estimator): r for r in rows}
    chain = "chain 2 roots, every 2 turns x 1"
    assert ("flat N=4", "spo_chain") not in by and ("flat N=4", "grpo") in by  # no chains there
    assert by[(chain, "spo_chain")].rows == by[(chain, "grpo")].rows
    assert by[(chain, "spo_chain")].rows < by[(chain, "spo_chain")].env_steps * 3 * 2  # value steps cost
    assert np.isfinite(by[(chain, "spo_chain")].corr)
    assert parse_chains("4x4x1, 2x2x1,") == [(4, 4, 1), (2, 2, 1)]
    for bad in ("4x4", "4x0x1", "axbxc"):
        with pytest.raises(ValueError, match="chains"):
            parse_chains(bad)


def test_the_cli_refuses_a_malformed_chain_sampling():
    from typer.testing import CliRunner

    from agentrl.cli import app

    result = CliRunner().invoke(app, ["bench", "credit", "--part", "tree", "--chains", "4x4"])
    assert result.exit_code != 0 and "ROOTSxINTERVALxWIDTH" in result.output
