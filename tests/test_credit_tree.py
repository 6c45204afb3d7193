"""Tree estimators (SPO-tree, TreePO) and the trainer's rule for steps shared by several branches."""

from __future__ import annotations

import numpy as np
import pytest

from agentrl.credit import Advantages, estimate
from agentrl.trainers.schedule import merge_copies
from agentrl.types import Step, StepBatch, Trajectory


def traj(
    tid: str, actions: str, outcome: float, parent: str | None = None, turn: int | None = None
) -> Trajectory:
    steps = []
    for k, a in enumerate(actions):
        info = {"copy_of": f"{parent}#{k}"} if parent is not None and k < turn else {}
        steps.append(Step(obs=f"o{k}", action=a, info=info))
    return Trajectory("t", "g", tid, steps, outcome=outcome, parent_id=parent, branch_turn=turn)


def tree_batch() -> StepBatch:
    """Two roots, a (x, y, z; R=1) and d (q, r; R=0); a branched after turn 0 into b (x, w, v; R=0) and
    c (x, y; R=1), which copy a's turn 0 only. Node a#0 has the leaves a, b, c; every later node one."""
    return StepBatch.from_trajectories(
        [
            traj("a", "xyz", 1.0),
            traj("b", "xwv", 0.0, "a", 1),
            traj("c", "xy", 1.0, "a", 1),
            traj("d", "qr", 0.0),
        ]
    )


def test_copies_share_a_node():
    batch = tree_batch()
    # rows: a0 a1 a2 | b0 b1 b2 | c0 c1 | d0 d1 ; b0 and c0 copy a0
    assert batch.node.tolist() == [0, 1, 2, 0, 4, 5, 0, 7, 8, 9]


def test_spo_tree_by_hand():
    """V(a#0) = mean(1, 0, 1) = 2/3; group mean = (1 + 0 + 1 + 0) / 4 = 0.5.
    Turn 0 of a, b, c: 2/3 - 0.5 = 1/6. Turn 1: a: V(a#1) = 1 minus V(a#0) = 2/3 -> 1/3;
    b: 0 - 2/3 = -2/3; c: 1 - 2/3 = 1/3. Turn 2: a: 1 - 1 = 0; b: 0 - 0 = 0.
    d: turn 0: 0 - 0.5 = -0.5, turn 1: 0 - 0 = 0."""
    adv = estimate("spo_tree", tree_batch(), invalid_penalty=0.0).step
    np.testing.assert_allclose(adv, [1 / 6, 1 / 3, 0, 1 / 6, -2 / 3, 0, 1 / 6, 1 / 3, -0.5, 0], atol=1e-12)


def test_treepo_by_hand():
    """Group {1, 0, 1, 0}: mean 0.5, unbiased std sqrt(1/3) = 0.57735. Branch point a#0 (leaves a, b, c:
    3 < 4): mean 2/3, std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3) = 0.57735.
    a: ((1 - .5) / s + (1 - 2/3) / s) / 2 = (0.86603 + 0.57735) / 2 = 0.72169; c the same;
    b: ((0 - .5) / s + (0 - 2/3) / s) / 2 = (-0.86603 - 1.15470) / 2 = -1.01036; d: -0.86603 (root only)."""
    adv = estimate("treepo", tree_batch(), invalid_penalty=0.0, eps=0.0).step
    s = np.sqrt(1 / 3)
    a = (0.5 / s + (1 / 3) / s) / 2
    b = (-0.5 / s - (2 / 3) / s) / 2
    np.testing.assert_allclose(adv, [a] * 3 + [b] * 3 + [a] * 2 + [-0.5 / s] * 2, atol=1e-12)


def test_without_branching_treepo_is_grpo_and_spo_tree_credits_turn_zero():
    from agentrl.eval.synthetic_rollouts import synthetic_batch

    batch = synthetic_batch(4, n=6, max_steps=8, seed=2)
    assert batch.node is None
    np.testing.assert_allclose(
        estimate("treepo", batch, eps=1e-6).step,
        estimate("grpo", batch, mode="mean_std", eps=1e-6).step,
        atol=1e-12,
    )
    adv = estimate("spo_tree", batch, invalid_penalty=0.0).step
    first = np.r_[True, batch.traj_idx[1:] != batch.traj_idx[:-1]]
    assert np.all(adv[~first] == 0.0) and np.any(adv[first] != 0.0)


def test_options_are_checked():
    with pytest.raises(ValueError, match="normalize"):
        estimate("spo_tree", tree_batch(), normalize="rank")
    g = estimate("spo_tree", tree_batch(), normalize="group_std", invalid_penalty=0.0, eps=0.0).step
    np.testing.assert_allclose(
        g, estimate("spo_tree", tree_batch(), invalid_penalty=0.0).step / np.sqrt(1 / 3)
    )


def test_a_shared_step_trains_once_with_the_mean_of_its_copies():
    batch = tree_batch()
    adv = Advantages(step=np.arange(10, dtype=np.float64), token=[np.full(2, float(r)) for r in range(10)])
    merged, trained = merge_copies(batch, adv)
    # node 0 = rows 0, 3, 6: mean (0 + 3 + 6) / 3 = 3
    assert merged.step.tolist() == [3, 1, 2, 3, 4, 5, 3, 7, 8, 9]
    assert [t.tolist() for t in merged.token][6] == [3.0, 3.0]
    assert trained.tolist() == [True, True, True, False, True, True, False, True, True, True]
    flat = StepBatch.from_trajectories([traj("a", "xy", 1.0)])
    assert merge_copies(flat, Advantages(step=np.zeros(2)))[1] is None
    # advantage channels (for a channel loss) are averaged like step; other extras are left alone
    extras = {"acc": np.arange(10.0), "other": np.arange(10.0)}
    merged, _ = merge_copies(batch, Advantages(step=np.zeros(10), extras=extras), ("acc",))
    assert merged.extras["acc"].tolist() == [3, 1, 2, 3, 4, 5, 3, 7, 8, 9]
    assert merged.extras["other"] is extras["other"]


def test_tree_fidelity_scores_each_sampled_step_once():
    from agentrl.envs.maze import MazeEnv
    from agentrl.eval.fidelity import improved_policy
    from agentrl.eval.tree_fidelity import sample_tree_group, tree_fidelity

    env = MazeEnv(size=3, n_doors=1, slip=0.1, max_steps=20)
    policy = improved_policy(env, "maze-0", 0.95)
    values = env.exact_values("maze-0", policy, 0.95)
    trajs = sample_tree_group(env, "maze-0", "g", 3, 2, 1, policy, values, 0, np.random.default_rng(0))
    roots = [t for t in trajs if t.parent_id is None]
    assert len(roots) == 3 and len(trajs) == 3 + 2 * sum(len(t) >= 2 for t in roots)
    for t in trajs:
        if t.parent_id is not None:  # its copies are its parent's steps, with the same true advantage
            parent = next(r for r in roots if r.traj_id == t.parent_id)
            k = t.branch_turn
            assert [s.action for s in t.steps[:k]] == [s.action for s in parent.steps[:k]]
            assert [s.info["true_advantage"] for s in t.steps[:k]] == [
                s.info["true_advantage"] for s in parent.steps[:k]
            ]
    rows = tree_fidelity(tasks=3, resamples=2, flat_sizes=(4,), estimators=("grpo", "treepo", "spo_tree"))
    by = {(r.sampling, r.estimator): r for r in rows}
    flat, tree = "flat N=4", "tree 4 roots, 1 x 2 branches"
    assert by[(flat, "treepo")].corr == pytest.approx(
        by[(flat, "grpo")].corr
    )  # TreePO is GRPO on flat groups
    assert by[(tree, "grpo")].rows == by[(tree, "treepo")].rows  # one sample per sampled step
    assert by[(tree, "grpo")].env_steps * 3 * 2 == pytest.approx(by[(tree, "grpo")].rows)
    assert by[(tree, "grpo")].env_steps > by[(flat, "grpo")].env_steps  # the branches cost steps


def test_portool_by_hand():
    """Successes a 1, b 0, c 1, d 0. A_traj = GRPO over {1, 0, 1, 0}: +-0.5 / sqrt(1/3) = +-0.86603.
    The one fork below the root is a#0 (x), continued by a (y), b (w) and c (y, but c's own step):
    step rewards 1, 0, 1 (each child's leaves' success), mean 2/3, std sqrt(1/3):
    A_fork = +0.57735 for a's and c's turn 1, -1.15470 for b's; every other turn 0."""
    batch = StepBatch.from_trajectories(
        [
            Trajectory("t", "g", "a", traj("a", "xyz", 1.0).steps, outcome=1.0, success=True),
            traj("b", "xwv", 0.0, "a", 1),
            Trajectory(
                "t",
                "g",
                "c",
                traj("c", "xy", 1.0, "a", 1).steps,
                outcome=1.0,
                success=True,
                parent_id="a",
                branch_turn=1,
            ),
            traj("d", "qr", 0.0),
        ]
    )
    adv = estimate("portool", batch, invalid_penalty=0.0, eps=0.0).step
    g, f = 0.5 / np.sqrt(1 / 3), (1 / 3) / np.sqrt(1 / 3)
    np.testing.assert_allclose(adv, [g, g + f, g, -g, -g - 2 * f, -g, g, g + f, -g, -g], atol=1e-12)
    # without branching: no fork below the root, so PORTool is GRPO
    flat = StepBatch.from_trajectories([traj("a", "xy", 1.0), traj("d", "qr", 0.0)])
    np.testing.assert_allclose(estimate("portool", flat).step, estimate("grpo", flat).step)
    with pytest.raises(ValueError, match="correct"):
        estimate("portool", flat, correct="maybe")
