"""A-GRAE (asymmetric, batch-accuracy-weighted GRPO advantages): hand-worked values, edge cases, and a
loop-per-group reference of the authors' formula on random batches. Max difference seen (relative to
max(1, |A|)): 8e-16, except 3e-11 where a group of equal rewards that are not binary fractions (0.2
after rescaling) has a reference mean one ulp off, which 1/(std + eps) = 1e6 of a zero-spread group magnifies;
the estimator gives those rows exactly 0."""

import math
import statistics

import numpy as np
import pytest

from agentrl.credit import estimate, estimator_info
from agentrl.eval.synthetic_rollouts import synthetic_trajectories
from agentrl.types import StepBatch, Trajectory
from tests.credit_helpers import batch_of, traj
from tests.credit_helpers import per_valid_traj as per_traj

EPS = 1e-6


# A: p = 1/2 ; B: p = 1/4 ; C: all fail (p = 0) ; D: all succeed (p = 1)  ->  p_bar = 1.75/4 = 0.4375
HAND = {"A": [1.0, 0.0, 0.0, 1.0], "B": [1.0, 0.0, 0.0, 0.0], "C": [0.0, 0.0], "D": [1.0, 1.0]}
P_BAR = 0.4375


def test_a_grae_by_hand():
    got = per_traj(batch_of(HAND), estimate("a_grae", batch_of(HAND)).step)
    # A: unbiased std sqrt(1/3), A^ = +-0.5/(sqrt(1/3)+eps); sqrt(p) = sqrt(1/2)
    hat = 0.5 / (math.sqrt(1 / 3) + EPS)
    w_a = (1 - P_BAR) * 0.5 / (1 - math.sqrt(0.5) + EPS) + P_BAR * 0.5 / (math.sqrt(0.5) + EPS)  # ~2.199
    assert got["A/0"] == pytest.approx(hat * w_a * P_BAR, rel=1e-12)  # positive: damped by min(1, p_bar/1)
    assert got["A/1"] == pytest.approx(-hat * w_a, rel=1e-12)  # negative: not damped
    # B: mean 1/4, unbiased var (9/16 + 3/16)/3 = 1/4, A^ = 1.5 and -0.5; sqrt(p) = 1/2 so both weights are 1
    w_b = (1 - P_BAR) * 0.5 / (0.5 + EPS) + P_BAR * 0.5 / (0.5 + EPS)
    assert got["B/0"] == pytest.approx(0.75 / (0.5 + EPS) * w_b * P_BAR, rel=1e-12)
    assert got["B/1"] == pytest.approx(-0.25 / (0.5 + EPS) * w_b, rel=1e-12)
    # all-fail and all-success groups: exactly 0 (A^ = 0 whatever the weight)
    assert got["C/0"] == got["C/1"] == got["D/0"] == got["D/1"] == 0.0


def test_alpha_and_mean_mode():
    b = batch_of(HAND)
    base = per_traj(b, estimate("a_grae", b).step)
    half = per_traj(b, estimate("a_grae", b, alpha=0.5).step)
    # alpha 0.5 (geo3k/med): positives damped by min(1, 0.4375/0.5) = 0.875 instead of 0.4375
    assert half["A/0"] == pytest.approx(base["A/0"] * 0.875 / P_BAR, rel=1e-12)
    assert half["A/1"] == base["A/1"]
    mean = per_traj(b, estimate("a_grae", b, mode="mean").step)
    # norm_adv_by_std_in_grpo=False: A^ = R - mean = +0.5 / -0.5 in A
    w_a = (1 - P_BAR) * 0.5 / (1 - math.sqrt(0.5) + EPS) + P_BAR * 0.5 / (math.sqrt(0.5) + EPS)
    assert mean["A/0"] == pytest.approx(0.5 * w_a * P_BAR, rel=1e-12)
    assert mean["A/1"] == pytest.approx(-0.5 * w_a, rel=1e-12)


def test_p_bar_moves_the_focus_from_easy_to_hard_groups():
    # easy group (3 of 4 succeed) and hard group (1 of 4): the weight A/A^ of their failures
    b = batch_of({"easy": [1.0, 1.0, 1.0, 0.0], "hard": [1.0, 0.0, 0.0, 0.0]})
    grpo = per_traj(b, estimate("grpo", b).step)

    def weight(p_bar: float, group: str) -> float:
        got = per_traj(b, estimate("a_grae", b, p_bar=p_bar).step)
        return got[f"{group}/3"] / grpo[f"{group}/3"]

    # easy: 0.5/(1 - sqrt(.75)) = 3.73 (easy focus), 0.5/sqrt(.75) = 0.577 (hard focus); hard group: 1 and 1
    assert weight(0.1, "easy") == pytest.approx(
        0.9 * 0.5 / (1 - math.sqrt(0.75)) + 0.1 * 0.5 / math.sqrt(0.75), rel=1e-4
    )
    assert weight(0.1, "easy") > 3 * weight(0.1, "hard")  # early: easy groups weigh more
    assert weight(0.9, "easy") < weight(0.9, "hard")  # late: hard groups weigh more
    # p_bar = 0: positives vanish, failures keep the easy-focus weight
    zero = per_traj(b, estimate("a_grae", b, p_bar=0.0).step)
    assert zero["easy/0"] == 0.0 and zero["hard/0"] == 0.0 and zero["easy/3"] < 0


def test_batch_p_bar_counts_each_group_once():
    # group sizes 2 and 6: p_bar = (1/2 + 1/6)/2 = 1/3, not the trajectory mean 2/8
    b = batch_of({"a": [1.0, 0.0], "b": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]})
    np.testing.assert_allclose(
        estimate("a_grae", b).step, estimate("a_grae", b, p_bar=1 / 3).step, rtol=1e-14
    )


def test_reward_range_scaling_and_clipping():
    ten = batch_of({"a": [10.0, 0.0, 0.0], "b": [10.0, 10.0, 0.0]})
    one = batch_of({"a": [1.0, 0.0, 0.0], "b": [1.0, 1.0, 0.0]})
    np.testing.assert_array_equal(estimate("a_grae", ten, max_reward=10.0).step, estimate("a_grae", one).step)
    # outside [min_reward, max_reward]: clipped, so 7 counts as 1 and -3 as 0 with the default range
    wild = batch_of({"a": [7.0, -3.0, 0.0], "b": [1.0, 1.0, 0.0]})
    np.testing.assert_array_equal(estimate("a_grae", wild).step, estimate("a_grae", one).step)
    assert np.all(np.isfinite(estimate("a_grae", batch_of({"a": [1e6, -1e6]})).step))


def test_singleton_modes():
    b = batch_of({"A": [1.0, 0.0, 0.0, 1.0], "S": [1.0]})
    zero = per_traj(b, estimate("a_grae", b).step)
    assert zero["S/0"] == 0.0
    # "zero": S counts in p_bar with its reward -> (1/2 + 1)/2 = 3/4
    hat = 0.5 / (math.sqrt(1 / 3) + EPS)
    w = 0.25 * 0.5 / (1 - math.sqrt(0.5) + EPS) + 0.75 * 0.5 / (math.sqrt(0.5) + EPS)
    assert zero["A/0"] == pytest.approx(hat * w * 0.75, rel=1e-12)
    code = per_traj(b, estimate("a_grae", b, singleton="code").step)
    # "code" (verl's fallback): S has mean 0, std 1 -> A^ = 1/(1+eps), p_S = 0, p_bar = (1/2 + 0)/2 = 1/4,
    # A_hard = 0.5 A^/eps (huge), A_easy = 0.5 A^/(1+eps); positive -> damped by 1/4
    hat_s = 1 / (1 + EPS)
    want_s = (0.75 * 0.5 * hat_s / (1 + EPS) + 0.25 * 0.5 * hat_s / EPS) * 0.25
    assert code["S/0"] == pytest.approx(want_s, rel=1e-12)


def test_truncated_failure_and_invalid_row():
    trajs = [
        traj("g", 0, 1.0, n_steps=3, invalid_at=1),
        traj("g", 1, 0.0, n_steps=3, terminated=False, truncated=True),
        traj("g", 2, 0.0, n_steps=2),
    ]
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("a_grae", b, invalid_penalty=0.2).step
    clean = estimate("a_grae", b, invalid_penalty=0.0).step
    np.testing.assert_allclose(adv - clean, [0, -0.2, 0, 0, 0, 0, 0, 0], atol=1e-15)
    got = per_traj(b, clean)
    assert got["g/1"] == got["g/2"] < 0 < got["g/0"]  # the truncated episode is an ordinary failure


def test_needs_no_optional_column_and_names_bad_options():
    info = estimator_info("a_grae")
    assert info.fields == () and info.inputs == () and not info.value_heads
    b = batch_of(HAND)
    assert b.state_key is None and b.turn_reward is None
    for options, match in [
        ({"mode": "median"}, "mode"),
        ({"singleton": "virtual"}, "singleton"),
        ({"alpha": 0.0}, "alpha"),
        ({"eps": 0.0}, "eps"),
        ({"max_reward": 0.0}, "max_reward"),
        ({"min_reward": float("nan")}, "min_reward"),
        ({"p_bar": 1.5}, "p_bar"),
        ({"invalid_penalty": float("inf")}, "invalid_penalty"),
    ]:
        with pytest.raises(ValueError, match=match):
            estimate("a_grae", b, **options)


# ----------------------------------------------------------------------------- reference


def reference_a_grae(
    trajs: list[Trajectory],
    *,
    mode="mean_std",
    alpha=1.0,
    eps=EPS,
    min_reward=0.0,
    max_reward=1.0,
    p_bar=None,
    invalid_penalty=0.1,
    singleton="zero",
) -> dict[tuple[str, int], float]:
    """compute_grpo_outcome_advantage(grpo_weight=2.0) written out: id2mean/id2std per group
    (statistics.stdev = unbiased), the mean of id2mean over groups, then each trajectory's weights."""
    scaled = {
        t.traj_id: min(1.0, max(0.0, (t.outcome - min_reward) / (max_reward - min_reward))) for t in trajs
    }
    groups: dict[str, list[float]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(scaled[t.traj_id])
    mean, std = {}, {}
    for g, scores in groups.items():
        if len(scores) == 1 and singleton == "code":
            mean[g], std[g] = 0.0, 1.0
        elif len(scores) == 1:
            mean[g], std[g] = scores[0], 0.0
        else:
            mean[g], std[g] = statistics.fmean(scores), statistics.stdev(scores)
    overall = statistics.fmean(mean.values()) if p_bar is None else p_bar
    out = {}
    for t in trajs:
        g, r = t.group_id, scaled[t.traj_id]
        if len(groups[g]) == 1 and singleton == "zero":
            a = 0.0
        else:
            a = (r - mean[g]) / (std[g] + eps) if mode == "mean_std" else r - mean[g]
            hard = 0.5 * a / (math.sqrt(mean[g]) + eps)
            easy = 0.5 * a / (1 - math.sqrt(mean[g]) + eps)
            a = (1 - overall) * easy + overall * hard
            if a > 0:
                a *= min(1.0, overall / alpha)
        for k, s in enumerate(t.steps):
            out[(t.traj_id, k)] = a - (0.0 if s.valid else invalid_penalty)
    return out


def random_trajectories(seed: int) -> list[Trajectory]:
    """Synthetic ALFWorld-like groups, two cut to one trajectory, odd seeds with continuous outcomes."""
    rng = np.random.default_rng(seed)
    trajs = synthetic_trajectories(8, n=6, max_steps=8, seed=seed)
    keep = [t for t in trajs if not (t.group_id in ("g1", "g5") and not t.traj_id.endswith("/0"))]
    for t in keep:
        if seed % 2:
            t.outcome = float(rng.choice([0.0, 1.0, rng.random()]))
    return keep


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"singleton": "code"},
        {"mode": "mean", "alpha": 0.5, "invalid_penalty": 0.3},
        {"p_bar": 0.8, "max_reward": 2.0, "min_reward": -0.5},
    ],
)
def test_matches_reference_on_random_batches(seed, options):
    trajs = random_trajectories(seed)
    b = StepBatch.from_trajectories(trajs)
    b = b.take(np.random.default_rng(seed).permutation(len(b)))
    want = reference_a_grae(trajs, **options)
    got = estimate("a_grae", b, **options).step
    diff = max(abs(a - want[(tid, int(t))]) / max(1.0, abs(a)) for tid, t, a in zip(b.traj_id, b.turn, got))
    assert diff < 1e-10, diff
