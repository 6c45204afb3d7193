"""SeeUPO per-turn advantages and sequential-update helpers, with numbers worked out by hand."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.credit import estimate
from agentrl.credit.seeupo import correction_ratio, turn_slots, update_corrections
from agentrl.types import Step, StepBatch, Trajectory


def traj(tid: str, group: str, n_steps: int, outcome: float) -> Trajectory:
    steps = [Step(obs=f"o{t}", action="a") for t in range(n_steps)]
    return Trajectory(group, group, tid, steps, terminated=True, outcome=outcome)


def example() -> StepBatch:
    # group G: g0 (3 turns, R=1), g1 (1 turn, R=0), g2 (2 turns, R=0.5); group H: h0 (2 turns, R=2), h1 (3 turns, R=0)
    return StepBatch.from_trajectories(
        [
            traj("g0", "G", 3, 1.0),
            traj("g1", "G", 1, 0.0),
            traj("g2", "G", 2, 0.5),
            traj("h0", "H", 2, 2.0),
            traj("h1", "H", 3, 0.0),
        ]
    )


def by_row(batch: StepBatch, arr: np.ndarray) -> dict[tuple[str, int], float]:
    return {(tid, int(t)): float(a) for tid, t, a in zip(batch.traj_id, batch.turn, arr)}


# ended="keep" (default, the official code): an ended trajectory stays in every later turn batch, so
# each slot holds all five trajectories and each trajectory gets the same advantage at every turn.
# Group means: G (1, 0, 0.5) -> 0.5, centred (0.5, -0.5, 0) ; H (2, 0) -> 1, centred (1, -1)
# z over the five, unbiased: mean 0, var (0.25 + 0.25 + 0 + 1 + 1)/4 = 0.625
S0 = math.sqrt(0.625)
EXPECTED = {
    ("g0", 0): 0.5 / S0,
    ("g0", 1): 0.5 / S0,
    ("g0", 2): 0.5 / S0,
    ("g1", 0): -0.5 / S0,
    ("g2", 0): 0.0,
    ("g2", 1): 0.0,
    ("h0", 0): 1 / S0,
    ("h0", 1): 1 / S0,
    ("h1", 0): -1 / S0,
    ("h1", 1): -1 / S0,
    ("h1", 2): -1 / S0,
}

# ended="drop" (the seeupo_v2 copy): per-turn baselines over the LIVE trajectories of the group,
# baseline 0 for a group with one live trajectory:
# turn 0: G {g0, g1, g2} mean 0.5 -> (0.5, -0.5, 0) ; H {h0, h1} mean 1 -> (1, -1)
# turn 1: G {g0, g2} mean 0.75 -> (0.25, -0.25) ; H {h0, h1} -> (1, -1)
# turn 2: G {g0} alone -> A = R = 1 ; H {h1} alone -> A = R = 0
# z-score over each turn slot (unbiased std):
# turn 0: mean 0, var 0.625 (as above)
# turn 1: mean 0, var (0.0625*2 + 1 + 1)/3 = 2.125/3
# turn 2: (1, 0): mean 0.5, var (0.25 + 0.25)/1 = 0.5 -> +-0.5/sqrt(0.5)
S1, S2 = math.sqrt(2.125 / 3), math.sqrt(0.5)
EXPECTED_DROP = {
    ("g0", 0): 0.5 / S0,
    ("g1", 0): -0.5 / S0,
    ("g2", 0): 0.0,
    ("h0", 0): 1 / S0,
    ("h1", 0): -1 / S0,
    ("g0", 1): 0.25 / S1,
    ("g2", 1): -0.25 / S1,
    ("h0", 1): 1 / S1,
    ("h1", 1): -1 / S1,
    ("g0", 2): 0.5 / S2,
    ("h1", 2): -0.5 / S2,
}


def test_ended_trajectories_kept_in_later_turns_by_default():
    b = example()
    assert by_row(b, estimate("seeupo", b).step) == pytest.approx(EXPECTED)
    assert by_row(b, estimate("seeupo", b, ended="keep").step) == pytest.approx(EXPECTED)


def test_ended_drop_uses_live_trajectories_and_a_lone_one_keeps_its_outcome():
    b = example()
    assert by_row(b, estimate("seeupo", b, ended="drop").step) == pytest.approx(EXPECTED_DROP)
    with pytest.raises(ValueError, match="ended"):
        estimate("seeupo", b, ended="pad")


def test_centre_only_when_std_is_small():
    b = example()
    got = by_row(b, estimate("seeupo", b, min_std=10.0, ended="drop").step)
    # every slot is only centred, so the raw per-turn differences remain, less the slot mean
    assert got[("g0", 0)] == pytest.approx(0.5)
    assert got[("h1", 0)] == pytest.approx(-1.0)
    assert got[("g2", 1)] == pytest.approx(-0.25)
    assert got[("h0", 1)] == pytest.approx(1.0)
    assert got[("g0", 2)] == pytest.approx(0.5)  # (1, 0) centred on 0.5
    kept = by_row(b, estimate("seeupo", b, min_std=10.0).step)
    assert kept[("g0", 2)] == pytest.approx(0.5) and kept[("h1", 2)] == pytest.approx(-1.0)
    assert kept[("g2", 1)] == pytest.approx(0.0)


def test_clip_to_three():
    # one success among 12 one-turn trajectories: centred 11/12 and -1/12 (x11),
    # unbiased var ((11/12)^2 + 11*(1/12)^2)/11 = 1/12 -> z = 11/sqrt(12) = 3.175 > 3 -> 3
    trajs = [traj(f"t{i}", "G", 1, 1.0 if i == 0 else 0.0) for i in range(12)]
    b = StepBatch.from_trajectories(trajs)
    got = estimate("seeupo", b).step
    assert got[0] == pytest.approx(3.0)
    np.testing.assert_allclose(got[1:], -(1 / 12) * math.sqrt(12))
    assert estimate("seeupo", b, clip=2.0).step[0] == pytest.approx(2.0)


def test_correction_factors_are_keyed_by_traj_id():
    b = example()
    corr = {"g0": 1.2, "h1": 0.8, "not-in-batch": 1.1}
    want = {k: v * corr.get(k[0], 1.0) for k, v in EXPECTED.items()}
    assert by_row(b, estimate("seeupo", b, correction=corr).step) == pytest.approx(want)
    perm = np.array([7, 3, 10, 0, 5, 1, 9, 2, 8, 4, 6])
    moved = b.take(perm)
    assert by_row(moved, estimate("seeupo", moved, correction=corr).step) == pytest.approx(want)
    with pytest.raises(ValueError, match="non-finite"):
        estimate("seeupo", b, correction={"g0": float("nan")})


def test_turn_slots_orders():
    b = example()  # rows: g0 t0..2 (0-2), g1 t0 (3), g2 t0..1 (4-5), h0 t0..1 (6-7), h1 t0..2 (8-10)
    rev = turn_slots(b)
    assert [t for t, _ in rev] == [2, 1, 0]
    assert [r.tolist() for _, r in rev] == [[2, 10], [1, 5, 7, 9], [0, 3, 4, 6, 8]]
    assert [t for t, _ in turn_slots(b, order="forward")] == [0, 1, 2]
    rnd = turn_slots(b, order="random", seed=3)
    assert sorted(t for t, _ in rnd) == [0, 1, 2]
    assert [t for t, _ in rnd] == [t for t, _ in turn_slots(b, order="random", seed=3)]
    with pytest.raises(ValueError, match="order"):
        turn_slots(b, order="sideways")


def test_correction_ratio_and_update():
    # exp(0.05) inside the band ; exp(0.2) = 1.22 -> 1.2 ; exp(-1) = 0.37 -> 0.8 ; clamp of 1e9 and -inf
    np.testing.assert_allclose(
        correction_ratio([0.05, 0.2, -1.0, 1e9, -np.inf]), [math.exp(0.05), 1.2, 0.8, 1.2, 0.8]
    )
    m = {"a": 1.1, "z": 0.9}
    new = update_corrections(m, ["a", "b", "c"], [0.2, -1.0, 0.05])
    # a: clip(1.1 * 1.2) = 1.2 ; b (new): 1 * 0.8 ; c (new): exp(0.05) ; z carried over
    assert new == pytest.approx({"a": 1.2, "b": 0.8, "c": math.exp(0.05), "z": 0.9})
    assert m == {"a": 1.1, "z": 0.9}
    # 0.85 * 0.9 = 0.765 -> clipped up to 0.8
    assert update_corrections({"a": 0.85}, ["a"], [math.log(0.9)])["a"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="NaN"):
        correction_ratio([float("nan")])
    with pytest.raises(ValueError, match="one value per traj id"):
        update_corrections({}, ["a", "b"], [0.1])
    with pytest.raises(ValueError, match="repeat"):
        update_corrections({}, ["a", "a"], [0.1, 0.2])


def test_keep_gives_each_trajectory_one_advantage_at_all_its_turns():
    b = example()
    adv = by_row(b, estimate("seeupo", b).step)
    for tid in ("g0", "g2", "h0", "h1"):
        assert len({round(a, 12) for (t, _), a in adv.items() if t == tid}) == 1


# ----------------------------------------------------------------------------- properties

FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def batches(draw, singleton_groups: bool = False, equal: bool = False):
    trajs = []
    for g in range(draw(st.integers(1, 3))):
        for i in range(1 if singleton_groups else draw(st.integers(1, 5))):
            outcome = 1.0 if equal else draw(FLOATS)
            trajs.append(traj(f"g{g}/{i}", f"g{g}", draw(st.integers(1, 5)), outcome))
    return StepBatch.from_trajectories(trajs), draw(st.integers(0, 2**16))


@pytest.mark.parametrize("ended", ["keep", "drop"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=batches())
def test_properties_permutation_bounded_deterministic(data, ended):
    batch, seed = data
    rng = np.random.default_rng(seed)
    corr = {tid: float(m) for tid, m in zip(batch.traj_names, rng.uniform(0.8, 1.2, batch.num_trajectories))}
    adv = estimate("seeupo", batch, correction=corr, ended=ended).step
    assert np.all(np.isfinite(adv)) and np.all(np.abs(adv) <= 3.0 * 1.2 + 1e-12)
    np.testing.assert_array_equal(adv, estimate("seeupo", batch, correction=corr, ended=ended).step)
    perm = rng.permutation(len(batch))
    moved = batch.take(perm)
    want, got = (
        by_row(batch, adv),
        by_row(moved, estimate("seeupo", moved, correction=corr, ended=ended).step),
    )
    for k, a in want.items():
        assert got[k] == pytest.approx(a, rel=1e-9, abs=1e-9), k


@settings(max_examples=25, deadline=None)
@given(st.one_of(batches(singleton_groups=True), batches(equal=True)))
def test_singleton_groups_and_equal_outcomes_give_zero(data):
    # ended="keep": a trajectory is compared with its whole group at every turn (under "drop" a lone
    # live trajectory keeps its outcome, so neither holds there)
    batch, _ = data
    np.testing.assert_array_equal(estimate("seeupo", batch).step, 0.0)


def test_keep_makes_late_slots_one_signed_drop_centres_every_slot():
    """What collapses SeeUPO on the maze under ``keep``: successes end early, so the rows still live in
    a late slot are mostly failures, all with negative advantages, and that slot's update pushes only
    down. ``drop`` z-scores over each slot's live rows, so every slot's trained advantages sum to 0."""
    trajs = []
    for g in "ABCD":
        trajs += [traj(f"{g}w", g, 2, 1.0), traj(f"{g}l1", g, 4, 0.0), traj(f"{g}l2", g, 4, 0.0)]
    trajs.append(traj("Dl3", "D", 3, 1.0))  # a late success: slot 2 is not all failures
    b = StepBatch.from_trajectories(trajs)
    keep, drop = estimate("seeupo", b).step, estimate("seeupo", b, ended="drop").step
    for t in range(4):
        rows = b.turn == t
        assert abs(drop[rows].mean()) < 1e-9
        if t >= 2:  # only the failures (and Dl3) are still running
            assert keep[rows].mean() < -0.4
    assert abs(keep[b.turn == 0].mean()) < 1e-9  # every trajectory is live in slot 0
