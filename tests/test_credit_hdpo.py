"""HDPO (accuracy advantage over the group + tool-efficiency advantage among its correct trajectories):
hand-worked values, edge cases, the benches' handling of an estimator that needs tool calls, and a
loop-per-trajectory reference of the published formula on random batches (max |difference| seen: 9e-16)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from agentrl.config import ConfigError
from agentrl.credit import MissingInputError, available_estimators, estimate, estimator_info
from agentrl.eval.fidelity import credit_fidelity, fidelity_markdown
from agentrl.eval.learning import credit_learning, trainable_estimators
from agentrl.eval.synthetic_rollouts import synthetic_trajectories
from agentrl.types import Step, StepBatch, Trajectory
from tests.credit_helpers import per_traj

EPS = 1e-6


def traj(
    group: str,
    i: int,
    *,
    success: bool,
    tools: int = 0,
    n_steps: int = 4,
    invalid: int = 0,
    outcome: float | None = None,
    **kw,
) -> Trajectory:
    """``tools`` of the ``n_steps`` rows are tool turns, ``invalid`` rows are invalid (the last ones)."""
    steps = [
        Step(obs=f"o{t}", action="a", valid=t < n_steps - invalid, info={"tool_call": t < tools})
        for t in range(n_steps)
    ]
    steps[-1].reward = float(success) if outcome is None else outcome
    kw.setdefault("terminated", True)
    return Trajectory(group, group, f"{group}/{i}", steps, success=success, **kw)


def hand_batch() -> StepBatch:
    trajs = [
        # A: three correct (0, 1 and 3 tool turns; the last has an invalid row) and one wrong with 2
        traj("A", 0, success=True, tools=0),
        traj("A", 1, success=True, tools=1),
        traj("A", 2, success=True, tools=3, invalid=1),
        traj("A", 3, success=False, tools=2),
        # B: one correct (|Q| = 1) and one wrong
        traj("B", 0, success=True, tools=2),
        traj("B", 1, success=False, tools=0),
        # C: all wrong ; D: a singleton ; E: all correct with the same tool count
        *[traj("C", i, success=False, tools=i) for i in range(3)],
        traj("D", 0, success=True, tools=1),
        *[traj("E", i, success=True, tools=2) for i in range(2)],
    ]
    return StepBatch.from_trajectories(trajs)


def test_hdpo_by_hand():
    b = hand_batch()
    adv = estimate("hdpo", b)
    acc, eff, got = per_traj(b, adv.extras["acc"]), per_traj(b, adv.extras["eff"]), per_traj(b, adv.step)
    # A: R_acc = 0.9*R_ans + 0.1*R_fmt = (1, 1, 0.9, 0.1): mean 0.75, deviations .25 .25 .15 -.65,
    # unbiased var (.0625 + .0625 + .0225 + .4225)/3 = .19
    s = math.sqrt(0.19)
    for k, d in enumerate((0.25, 0.25, 0.15, -0.65)):
        assert acc[f"A/{k}"] == pytest.approx(d / (s + EPS), rel=1e-12)
    # A's Q = {0, 1, 2}: R_tool = 1/(T+1) = (1, 1/2, 1/4), mean 7/12, deviations 5/12, -1/12, -4/12,
    # unbiased var (25 + 1 + 16)/144/2 = 7/48 ; the wrong trajectory gets no efficiency credit
    s_q = math.sqrt(7 / 48)
    for k, d in enumerate((5 / 12, -1 / 12, -4 / 12)):
        assert eff[f"A/{k}"] == pytest.approx(d / (s_q + EPS), rel=1e-12)
    assert eff["A/3"] == 0.0
    # combined, w = 1: the tool-free correct answer gets the most credit, the wrong one the least; the
    # correct answer with 3 tool turns ends below 0 (.15/.436 - .333/.382 = -.53)
    for k in range(4):
        assert got[f"A/{k}"] == pytest.approx(acc[f"A/{k}"] + eff[f"A/{k}"], rel=1e-12)
    assert got["A/0"] > got["A/1"] > 0 > got["A/2"] > got["A/3"]
    assert got["A/2"] == pytest.approx(0.15 / (s + EPS) - (4 / 12) / (s_q + EPS), rel=1e-12)
    # B: R_acc (1, 0.1), mean .55, deviations +-.45, var 2*.45^2 = .405 ; |Q| = 1 -> A_eff = 0
    assert acc["B/0"] == pytest.approx(0.45 / (math.sqrt(0.405) + EPS), rel=1e-12)
    assert acc["B/1"] == pytest.approx(-0.45 / (math.sqrt(0.405) + EPS), rel=1e-12)
    assert eff["B/0"] == eff["B/1"] == 0.0
    # C all wrong, D alone, E all correct with equal T: exactly 0 in both channels
    for key in ("C/0", "C/1", "C/2", "D/0", "E/0", "E/1"):
        assert acc[key] == 0.0 and eff[key] == 0.0 and got[key] == 0.0


def test_options_weights_answer_and_format_reward():
    b = hand_batch()
    base = estimate("hdpo", b)
    # eff_weight scales only the efficiency channel ; 0 leaves the accuracy channel alone
    w = estimate("hdpo", b, eff_weight=0.25)
    np.testing.assert_allclose(w.step, base.extras["acc"] + 0.25 * base.extras["eff"], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(estimate("hdpo", b, eff_weight=0.0).step, base.extras["acc"])
    # fmt_weight 0 and answer = success: A_acc is GRPO on the 0/1 outcome with no invalid penalty
    plain = estimate("hdpo", b, fmt_weight=0.0, eff_weight=0.0).step
    np.testing.assert_allclose(plain, estimate("grpo", b, invalid_penalty=0.0).step, rtol=0, atol=1e-15)
    # format_reward = valid_rate: A/2 has 3 of 4 rows valid -> R_acc = .9 + .1*.75 = .975
    rate = per_traj(b, estimate("hdpo", b, format_reward="valid_rate").extras["acc"])
    x = [1.0, 1.0, 0.975, 0.1]
    assert rate["A/2"] == pytest.approx((0.975 - statistics.mean(x)) / (statistics.stdev(x) + EPS), rel=1e-12)
    # answer = outcome: the env's graded outcome replaces the 0/1 verdict; Q still follows success
    g = StepBatch.from_trajectories(
        [
            traj("G", 0, success=True, tools=1, outcome=1.0),
            traj("G", 1, success=False, tools=0, outcome=0.6),
            traj("G", 2, success=False, tools=0, outcome=0.0),
        ]
    )
    graded = estimate("hdpo", g, answer="outcome")
    r = [0.9 * 1.0 + 0.1, 0.9 * 0.6 + 0.1, 0.1]
    acc = per_traj(g, graded.extras["acc"])
    for k in range(3):
        assert acc[f"G/{k}"] == pytest.approx((r[k] - statistics.mean(r)) / (statistics.stdev(r) + EPS))
    assert np.all(graded.extras["eff"] == 0.0)  # one correct trajectory: |Q| < 2


def test_efficiency_channel_orders_correct_trajectories_by_tool_turns():
    # all correct and valid: A_acc = 0, and fewer tool turns is strictly better
    b = StepBatch.from_trajectories([traj("g", i, success=True, tools=t) for i, t in enumerate([3, 0, 1, 2])])
    got = per_traj(b, estimate("hdpo", b).step)
    assert got["g/1"] > got["g/2"] > got["g/3"] > got["g/0"]
    assert sum(got.values()) == pytest.approx(0.0, abs=1e-12)


def test_a_tool_heavy_correct_answer_can_fall_below_the_wrong_ones():
    # 16 rollouts: 9 correct tool-free, 1 correct with 3 tool turns, 6 wrong. R_acc: ten 1s and six .1s,
    # mean .6625, unbiased std .9*sqrt(10*6/(16*15)) = .45: A_acc .75 (correct) and -1.25 (wrong).
    # R_tool over Q: nine 1s and one 1/4, so the outlier's z-score is -(n-1)/sqrt(n) = -9/sqrt(10)
    trajs = [traj("g", i, success=True) for i in range(9)] + [traj("g", 9, success=True, tools=3)]
    trajs += [traj("g", 10 + i, success=False) for i in range(6)]
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("hdpo", b)
    acc, eff, got = per_traj(b, adv.extras["acc"]), per_traj(b, adv.extras["eff"]), per_traj(b, adv.step)
    assert acc["g/9"] == pytest.approx(0.75, rel=1e-5) and acc["g/10"] == pytest.approx(-1.25, rel=1e-5)
    assert eff["g/9"] == pytest.approx(-9 / math.sqrt(10), rel=1e-5)
    assert got["g/9"] < got["g/10"] < 0 < got["g/0"]


def test_truncated_and_invalid_trajectories():
    # a truncated trajectory did not succeed: outside Q, even with fewer tool turns than the correct ones
    b = StepBatch.from_trajectories(
        [
            traj("g", 0, success=True, tools=3),
            traj("g", 1, success=True, tools=1),
            traj("g", 2, success=False, tools=0, terminated=False, truncated=True),
            traj("g", 3, success=True, tools=1, invalid=2),
        ]
    )
    adv = estimate("hdpo", b)
    acc, eff = per_traj(b, adv.extras["acc"]), per_traj(b, adv.extras["eff"])
    assert eff["g/2"] == 0.0 and acc["g/2"] < 0
    # g/3 invalid: loses 0.1 in R_acc (1, 1, .1, .9) but keeps its efficiency credit, the same as g/1
    assert acc["g/3"] < acc["g/1"] and eff["g/3"] == eff["g/1"] > 0 > eff["g/0"]
    # R_tool over Q: (1/4, 1/2, 1/2), mean 5/12, deviations -2/12, 1/12, 1/12, var (4 + 1 + 1)/144/2
    assert eff["g/0"] == pytest.approx((-2 / 12) / (math.sqrt(6 / 288) + EPS), rel=1e-12)


def test_needs_tool_calls_and_validates_options():
    no_tools = StepBatch.from_trajectories([Trajectory("t", "g", "g/0", [Step(obs="o", reward=1.0)])])
    with pytest.raises(MissingInputError, match="tool_call"):
        estimate("hdpo", no_tools)
    b = hand_batch()
    for bad in (
        {"eff_weight": -1.0},
        {"eff_weight": math.nan},
        {"fmt_weight": 1.5},
        {"fmt_weight": True},
        {"answer": "judge"},
        {"format_reward": "format_valid"},
        {"eps": 0.0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            estimate("hdpo", b, **bad)
    with pytest.raises(ValueError, match="unknown option"):
        estimate("hdpo", b, omega=1.0)
    info = estimator_info("hdpo")
    assert info.fields == ("tool_call",) and info.loss == "ppo_token_mean" and not info.spans
    assert info.options == {
        "eff_weight": 1.0,
        "fmt_weight": 0.1,
        "answer": "success",
        "format_reward": "all_valid",
        "eps": 1e-6,
    }


def test_channels_are_declared_for_the_two_term_loss():
    """The trait names the extras a channel loss clips on their own and their weights; ``step`` is
    their weighted sum, so one-advantage losses see the same thing as before."""
    info = estimator_info("hdpo")
    assert dict(info.channels) == {"acc": 1.0, "eff": "eff_weight"}
    assert info.channel_weights({}) == {"acc": 1.0, "eff": 1.0}
    assert info.channel_weights({"eff_weight": 0.25, "fmt_weight": 0.0}) == {"acc": 1.0, "eff": 0.25}
    b = hand_batch()
    adv = estimate("hdpo", b, eff_weight=0.25)
    np.testing.assert_array_equal(adv.step, adv.extras["acc"] + 0.25 * adv.extras["eff"])


def test_channel_declarations_are_checked():
    from agentrl.credit import Advantages, register_estimator

    def fn(batch, *, w: float = 1.0):
        return Advantages(step=np.zeros(len(batch)), extras={"x": np.zeros(len(batch))})

    with pytest.raises(ValueError, match="not an option"):
        register_estimator("test_channels_bad_weight", channels={"x": "omega"})(fn)
    with pytest.raises(ValueError, match="not with spans or per_token"):
        register_estimator("test_channels_spans", spans=("action",), channels={"x": 1.0})(fn)
    with pytest.raises(ValueError, match="has weight"):
        register_estimator("test_channels_nan", channels={"x": float("nan")})(fn)
    register_estimator("test_channels_missing", channels={"x": "w", "y": 1.0})(fn)
    with pytest.raises(RuntimeError, match=r"declares channels \['y'\]"):
        estimate("test_channels_missing", hand_batch())


def test_the_two_term_loss_needs_an_estimator_with_channels():
    from agentrl.config import AlgorithmConfig

    assert AlgorithmConfig(estimator="hdpo", loss="ppo_channels").resolved_loss == "ppo_channels"
    with pytest.raises(ValueError, match="declares none"):
        AlgorithmConfig(estimator="grpo", loss="ppo_channels")


def test_row_order_does_not_matter():
    b = hand_batch()
    perm = np.random.default_rng(3).permutation(len(b))
    moved = estimate("hdpo", b.take(perm))
    np.testing.assert_array_equal(moved.step, estimate("hdpo", b).step[perm])
    np.testing.assert_array_equal(moved.extras["eff"], estimate("hdpo", b).extras["eff"][perm])


# ----------------------------------------------------------------------------- reference


def reference_hdpo(trajs: list[Trajectory], w: float = 1.0, fmt_weight: float = 0.1) -> dict[str, float]:
    """The published formula, one trajectory at a time."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t)
    out = {}
    for members in groups.values():
        r_acc = [
            (1 - fmt_weight) * float(t.success) + fmt_weight * float(all(s.valid for s in t.steps))
            for t in members
        ]
        correct = [t for t in members if t.success]
        r_tool = {t.traj_id: 1.0 / (sum(bool(s.info["tool_call"]) for s in t.steps) + 1) for t in correct}
        for t, r in zip(members, r_acc):
            a_acc = 0.0
            if len(members) > 1:
                a_acc = (r - statistics.mean(r_acc)) / (statistics.stdev(r_acc) + EPS)
            a_eff = 0.0
            if t.success and len(correct) >= 2:
                vals = list(r_tool.values())
                a_eff = (r_tool[t.traj_id] - statistics.mean(vals)) / (statistics.stdev(vals) + EPS)
            out[t.traj_id] = a_acc + w * a_eff
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_reference_on_synthetic_batches(seed):
    trajs = synthetic_trajectories(P=12, n=6, max_steps=8, seed=seed)
    rng = np.random.default_rng(seed)
    for t in trajs:  # some groups with all-equal or one-member Q, some trajectories with no tool turn
        for s in t.steps:
            s.info["tool_call"] = bool(rng.random() < 0.4)
    trajs += [  # a singleton group and a group of correct, tool-free, valid trajectories
        traj("solo", 0, success=True, tools=1),
        *[traj("same", i, success=True, tools=0) for i in range(3)],
    ]
    b = StepBatch.from_trajectories(trajs)
    for w, fw in ((1.0, 0.1), (0.5, 0.3)):
        want = reference_hdpo(trajs, w, fw)
        got = per_traj(b, estimate("hdpo", b, eff_weight=w, fmt_weight=fw).step)
        diff = max(abs(got[k] - want[k]) for k in want)
        assert diff < 1e-12, diff
    assert any(v != 0 for v in per_traj(b, estimate("hdpo", b).extras["eff"]).values())


# ----------------------------------------------------------------------------- benches


def test_fidelity_on_the_maze_lists_hdpo_as_skipped_with_the_reason():
    rows = credit_fidelity(tasks=2, group_sizes=(4,), resamples=2, estimators=["grpo", "hdpo"], seed=0)
    by = {r.estimator: r for r in rows}
    assert by["grpo"].rows > 0 and not by["grpo"].note
    skip = by["hdpo"]
    assert skip.rows == 0 and math.isnan(skip.corr) and math.isnan(skip.sign) and math.isnan(skip.noise)
    assert skip.note.startswith("skipped:") and "tool_call" in skip.note
    assert "| hdpo | outcome | — | — | — | skipped:" in fidelity_markdown(rows)
    json.dumps([r.as_dict() for r in rows])  # the bench writes these rows to fidelity.json


def test_learning_bench_leaves_hdpo_out_on_the_maze(tmp_path: Path):
    """The maze's think_action rollouts carry no tool calls (tests/test_trainer.py trains hdpo two
    iterations on the calculator tool env instead)."""
    assert "hdpo" in available_estimators()
    assert "hdpo" not in trainable_estimators() and "hdpo" in trainable_estimators("tool_call")
    with pytest.raises(ConfigError, match=r"cannot supply what \['hdpo'\] need"):
        credit_learning(tmp_path, families=["maze"], estimators=["grpo", "hdpo"])
    assert not (tmp_path / "maze" / "seed0").exists()
