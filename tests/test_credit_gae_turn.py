"""GAE, MT-GRPO (two-phase and K-turn) and MT-PPO, with expected numbers worked out by hand."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.credit import MissingInputError, estimate
from agentrl.types import Step, StepBatch, Trajectory


def traj(
    tid: str,
    rewards: list[float],
    *,
    group: str = "G",
    truncated: bool = False,
    invalid_at: int | None = None,
    turn_rewards: list[float] | None = None,
    tool_calls: list[bool] | None = None,
    outcome: float | None = None,
) -> Trajectory:
    steps = []
    for t, r in enumerate(rewards):
        info = {} if tool_calls is None else {"tool_call": tool_calls[t]}
        tr = None if turn_rewards is None else turn_rewards[t]
        steps.append(
            Step(obs=f"o{t}", action="a", reward=r, valid=t != invalid_at, turn_reward=tr, info=info)
        )
    return Trajectory(
        group, group, tid, steps, terminated=not truncated, truncated=truncated, outcome=outcome
    )


def by_row(batch: StepBatch, arr: np.ndarray) -> dict[tuple[str, int], float]:
    return {(tid, int(t)): float(a) for tid, t, a in zip(batch.traj_id, batch.turn, arr)}


# ----------------------------------------------------------------------------- GAE


def gae_batch() -> tuple[StepBatch, np.ndarray]:
    # "x": terminated, r = (0.5, -1, 2), V = (1, 0.5, -0.2); "y": truncated, r = (0, 1), V = (0.3, 0.6)
    b = StepBatch.from_trajectories([traj("x", [0.5, -1.0, 2.0]), traj("y", [0.0, 1.0], truncated=True)])
    return b, np.array([1.0, 0.5, -0.2, 0.3, 0.6])


def test_gae_three_steps_by_hand():
    b, v = gae_batch()
    adv = estimate("gae", b, values=v, gamma=0.9, lam=0.8, whiten=False)
    got = by_row(b, adv.step)
    # x: delta_2 = 2 + 0 - (-0.2) = 2.2 (done)
    #    delta_1 = -1 + 0.9*(-0.2) - 0.5 = -1.68
    #    delta_0 = 0.5 + 0.9*0.5 - 1.0 = -0.05
    #    A_2 = 2.2 ; A_1 = -1.68 + 0.72*2.2 = -0.096 ; A_0 = -0.05 + 0.72*(-0.096) = -0.11912
    assert got[("x", 2)] == pytest.approx(2.2)
    assert got[("x", 1)] == pytest.approx(-0.096)
    assert got[("x", 0)] == pytest.approx(-0.11912)
    # y (truncated, no bootstrap: V after the last row = 0):
    #    delta_1 = 1 - 0.6 = 0.4 ; delta_0 = 0 + 0.9*0.6 - 0.3 = 0.24 ; A_0 = 0.24 + 0.72*0.4 = 0.528
    assert got[("y", 1)] == pytest.approx(0.4)
    assert got[("y", 0)] == pytest.approx(0.528)
    # value targets A + V, unwhitened
    np.testing.assert_allclose(
        adv.extras["returns"], [-0.11912 + 1.0, -0.096 + 0.5, 2.2 - 0.2, 0.528 + 0.3, 0.4 + 0.6]
    )


def test_gae_bootstrap_truncated_uses_own_value():
    b, v = gae_batch()
    got = by_row(
        b, estimate("gae", b, values=v, gamma=0.9, lam=0.8, bootstrap_truncated=True, whiten=False).step
    )
    # y: delta_1 = 1 + 0.9*0.6 - 0.6 = 0.94 ; A_0 = 0.24 + 0.72*0.94 = 0.9168
    assert got[("y", 1)] == pytest.approx(0.94)
    assert got[("y", 0)] == pytest.approx(0.9168)
    # x terminated: unchanged
    assert got[("x", 1)] == pytest.approx(-0.096)


def test_gae_defaults_are_monte_carlo_return_minus_value_whitened():
    b, v = gae_batch()
    raw = estimate("gae", b, values=v, whiten=False).step
    got = by_row(b, raw)
    # gamma = lam = 1: A_t = sum_{k>=t} r_k - V_t
    assert got[("x", 0)] == pytest.approx((0.5 - 1.0 + 2.0) - 1.0)
    assert got[("x", 1)] == pytest.approx((-1.0 + 2.0) - 0.5)
    assert got[("x", 2)] == pytest.approx(2.0 + 0.2)
    assert got[("y", 0)] == pytest.approx(1.0 - 0.3)
    # by default the batch's advantages are whitened (verl, baselines' ppo2): centred, unit population std
    default = estimate("gae", b, values=v).step
    np.testing.assert_allclose(default, (raw - raw.mean()) / raw.std(), atol=1e-6)
    assert abs(default.mean()) < 1e-12


def test_gae_whiten_and_invalid_penalty():
    b = StepBatch.from_trajectories([traj("x", [0.0, 0.0, 1.0], invalid_at=1)])
    v = np.zeros(3)
    adv = estimate("gae", b, values=v, invalid_penalty=0.1, whiten=False)
    # MC returns (1, 1, 1); the penalty hits only row 1 (after discounting, no leak to row 0)
    np.testing.assert_allclose(adv.step, [1.0, 0.9, 1.0])
    np.testing.assert_allclose(adv.extras["returns"], [1.0, 0.9, 1.0])
    w = estimate("gae", b, values=v, invalid_penalty=0.1, whiten=True)
    # mean 2.9/3 ; population std of (1, .9, 1) = sqrt(((1/30)^2*2 + (2/30)^2)/3)
    mean, std = 2.9 / 3, math.sqrt(((1 / 30) ** 2 * 2 + (2 / 30) ** 2) / 3)
    np.testing.assert_allclose(w.step, (np.array([1.0, 0.9, 1.0]) - mean) / (std + 1e-8))
    np.testing.assert_allclose(w.extras["returns"], [1.0, 0.9, 1.0])


def test_gae_follows_rows_after_permutation():
    b, v = gae_batch()
    perm = np.array([4, 2, 0, 3, 1])
    want = by_row(b, estimate("gae", b, values=v, gamma=0.9, lam=0.8).step)
    moved = b.take(perm)
    got = by_row(moved, estimate("gae", moved, values=v[perm], gamma=0.9, lam=0.8).step)
    assert got == pytest.approx(want)


def test_gae_missing_values_and_bad_values():
    b, v = gae_batch()
    with pytest.raises(MissingInputError, match="values"):
        estimate("gae", b)
    with pytest.raises(ValueError, match="one value per row"):
        estimate("gae", b, values=v[:3])
    with pytest.raises(ValueError, match="not a dict"):
        estimate("gae", b, values={"low": v})


# ----------------------------------------------------------------------------- MT-GRPO


def mt_batch() -> StepBatch:
    # group G: t0 tool call at turn 1, R^T = 1, R^O = 1 ; t1 tool call at turn 0, R^T = 0.75, R^O = 0 ;
    #          t2 no tool call, R^T = 0, R^O = 0.   group S: a singleton with a tool call.
    return StepBatch.from_trajectories(
        [
            traj("t0", [0, 0, 1], turn_rewards=[0.0, 1.0, 0.0], tool_calls=[False, True, False]),
            traj("t1", [0, 0], turn_rewards=[0.5, 0.25], tool_calls=[True, True]),
            traj("t2", [0, 0], turn_rewards=[0.0, 0.0], tool_calls=[False, False]),
            traj("s0", [0, 1], group="S", turn_rewards=[1.0, 0.0], tool_calls=[True, False]),
        ]
    )


def test_mt_grpo_two_phase_by_hand():
    b = mt_batch()
    got = by_row(b, estimate("mt_grpo", b, lam=0.5).step)
    eps = 1e-4
    # A^O: R^O = (1, 0, 0): mean 1/3, unbiased var ((2/3)^2 + 2*(1/3)^2)/2 = 1/3
    s_o = math.sqrt(1 / 3)
    ao = [(2 / 3) / (s_o + eps), (-1 / 3) / (s_o + eps)]
    # A^T: R^T = (1, 0.75, 0): mean 7/12, deviations 5/12, 2/12, -7/12, var (25 + 4 + 49)/144/2 = 39/144
    s_t = math.sqrt(39) / 12
    at = [(5 / 12) / (s_t + eps), (2 / 12) / (s_t + eps)]
    # no tool call: R^T + R^O = (2, 0.75, 0): mean 11/12, deviations 13/12, -2/12, -11/12,
    # var (169 + 4 + 121)/144/2 = 147/144
    s_c = math.sqrt(147) / 12
    # t0: turns 0 and 1 (up to and including the first tool call) get A^O + lam*A^T, turn 2 A^O
    assert got[("t0", 0)] == pytest.approx(ao[0] + 0.5 * at[0])
    assert got[("t0", 1)] == pytest.approx(ao[0] + 0.5 * at[0])
    assert got[("t0", 2)] == pytest.approx(ao[0])
    # t1: first tool call at turn 0
    assert got[("t1", 0)] == pytest.approx(ao[1] + 0.5 * at[1])
    assert got[("t1", 1)] == pytest.approx(ao[1])
    # t2: norm_G(R^T + R^O) on every row
    assert got[("t2", 0)] == pytest.approx((-11 / 12) / (s_c + eps))
    assert got[("t2", 1)] == pytest.approx((-11 / 12) / (s_c + eps))
    # singleton group: everything normalises to 0
    assert got[("s0", 0)] == 0.0 and got[("s0", 1)] == 0.0


def test_mt_grpo_a_call_on_the_last_turn_is_not_a_tool_turn():
    # The reference counts a turn as a tool turn only when a tool result follows it
    # (mt_grpo_env_trainer.py, _find_result_positions); none follows a trajectory's last turn.
    # u0: its only call is on its last turn -> no tool turn -> norm_G(R^T + R^O) on both rows
    # u1: call at turn 0 -> turn 0 gets A^O + A^T, turn 1 gets A^O
    b = StepBatch.from_trajectories(
        [
            traj("u0", [0, 0], turn_rewards=[0.0, 1.0], tool_calls=[False, True], outcome=1.0),
            traj("u1", [0, 0], turn_rewards=[0.5, 0.0], tool_calls=[True, False], outcome=0.0),
        ]
    )
    got = by_row(b, estimate("mt_grpo", b).step)
    eps = 1e-4
    # R^O (1, 0): deviations +-0.5, unbiased std sqrt(0.5) ; R^T (1, 0.5): +-0.25, std sqrt(0.125) ;
    # R^T + R^O (2, 0.5): +-0.75, std sqrt(1.125)
    ao, at, ac = (
        0.5 / (math.sqrt(0.5) + eps),
        0.25 / (math.sqrt(0.125) + eps),
        0.75 / (math.sqrt(1.125) + eps),
    )
    assert got[("u0", 0)] == pytest.approx(ac) and got[("u0", 1)] == pytest.approx(ac)
    assert got[("u1", 0)] == pytest.approx(-ao - at) and got[("u1", 1)] == pytest.approx(-ao)
    # counting the last-turn call would have given u0 A^O + A^T = 1.414 on both rows
    assert ao + at == pytest.approx(1.414, abs=1e-3) and ac == pytest.approx(0.707, abs=1e-3)


def test_mt_grpo_two_phase_mean_mode():
    b = mt_batch()
    got = by_row(b, estimate("mt_grpo", b, mode="mean").step)
    # lam 1: A^O = 1 - 1/3, A^T = 1 - 7/12
    assert got[("t0", 0)] == pytest.approx(2 / 3 + 5 / 12)
    assert got[("t0", 2)] == pytest.approx(2 / 3)
    assert got[("t2", 1)] == pytest.approx(0 - 11 / 12)


def test_mt_grpo_k_turn_by_hand():
    b = StepBatch.from_trajectories(
        [
            traj("a", [0, 1], turn_rewards=[1.0, 0.0]),
            traj("b", [0, 0], turn_rewards=[0.0, 1.0]),
            traj("c", [1], turn_rewards=[0.5]),
        ]
    )
    got = by_row(b, estimate("mt_grpo", b, variant="k_turn", lam=2.0).step)
    eps = 1e-4
    # A^O: outcomes (1, 0, 1): mean 2/3, var ((1/3)^2*2 + (2/3)^2)/2 = 1/3
    s_o = math.sqrt(1 / 3)
    ao_a, ao_b, ao_c = (1 / 3) / (s_o + eps), (-2 / 3) / (s_o + eps), (1 / 3) / (s_o + eps)
    # turn 0: (1, 0, 0.5): mean 0.5, var (0.25 + 0.25 + 0)/2 = 0.25 -> std 0.5
    # turn 1: c is inactive; (0, 1): mean 0.5, var (0.25 + 0.25)/1 = 0.5
    s1 = math.sqrt(0.5)
    assert got[("a", 0)] == pytest.approx(ao_a + 2.0 * 0.5 / (0.5 + eps))
    assert got[("b", 0)] == pytest.approx(ao_b + 2.0 * -0.5 / (0.5 + eps))
    assert got[("c", 0)] == pytest.approx(ao_c + 0.0)
    assert got[("a", 1)] == pytest.approx(ao_a + 2.0 * -0.5 / (s1 + eps))
    assert got[("b", 1)] == pytest.approx(ao_b + 2.0 * 0.5 / (s1 + eps))


def test_mt_grpo_missing_fields_and_bad_options():
    no_turn = StepBatch.from_trajectories([traj("a", [0, 1], tool_calls=[True, False])])
    with pytest.raises(MissingInputError, match="turn_reward"):
        estimate("mt_grpo", no_turn)
    no_tool = StepBatch.from_trajectories([traj("a", [0, 1], turn_rewards=[1.0, 0.0])])
    with pytest.raises(MissingInputError, match="tool_call"):
        estimate("mt_grpo", no_tool)
    # K-turn does not need tool_call
    assert estimate("mt_grpo", no_tool, variant="k_turn").step.shape == (2,)
    with pytest.raises(ValueError, match="variant"):
        estimate("mt_grpo", no_tool, variant="three_phase")


# ----------------------------------------------------------------------------- MT-PPO


def test_mt_ppo_by_hand():
    b = StepBatch.from_trajectories([traj("a", [0.0, 0.0, 3.0], turn_rewards=[0.2, 0.0, 0.5], outcome=1.0)])
    v = np.array([0.4, 0.1, 0.7])
    adv = estimate("mt_ppo", b, values=v, gamma=0.9, lam=0.8, whiten=False)
    # r = turn rewards + outcome on the last row = (0.2, 0, 0.5 + 1); env rewards are not used
    # delta_2 = 1.5 - 0.7 = 0.8 ; delta_1 = 0 + 0.9*0.7 - 0.1 = 0.53 ; delta_0 = 0.2 + 0.9*0.1 - 0.4 = -0.11
    # A_2 = 0.8 ; A_1 = 0.53 + 0.72*0.8 = 1.106 ; A_0 = -0.11 + 0.72*1.106 = 0.68632
    np.testing.assert_allclose(adv.step, [0.68632, 1.106, 0.8])
    np.testing.assert_allclose(adv.extras["returns"], [0.68632 + 0.4, 1.106 + 0.1, 0.8 + 0.7])
    raw = np.array([0.68632, 1.106, 0.8])
    default = estimate("mt_ppo", b, values=v, gamma=0.9, lam=0.8)  # whitened over the batch
    np.testing.assert_allclose(default.step, (raw - raw.mean()) / raw.std(), atol=1e-6)
    np.testing.assert_allclose(default.extras["returns"], adv.extras["returns"])


def test_mt_ppo_missing_inputs():
    with_turn = StepBatch.from_trajectories([traj("a", [0, 1], turn_rewards=[1.0, 0.0])])
    with pytest.raises(MissingInputError, match="values"):
        estimate("mt_ppo", with_turn)
    no_turn = StepBatch.from_trajectories([traj("a", [0, 1])])
    with pytest.raises(MissingInputError, match="turn_reward"):
        estimate("mt_ppo", no_turn, values=np.zeros(2))


# ----------------------------------------------------------------------------- properties

FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def turn_batches(draw, singleton_groups: bool = False, constant: bool = False):
    trajs = []
    for g in range(draw(st.integers(1, 3))):
        for i in range(1 if singleton_groups else draw(st.integers(1, 4))):
            n = draw(st.integers(1, 5))
            rewards = [0.0] * n if constant else draw(st.lists(FLOATS, min_size=n, max_size=n))
            turn_rewards = [0.0] * n if constant else draw(st.lists(FLOATS, min_size=n, max_size=n))
            tools = draw(st.lists(st.booleans(), min_size=n, max_size=n))
            trajs.append(
                traj(
                    f"g{g}/{i}",
                    rewards,
                    group=f"g{g}",
                    truncated=draw(st.booleans()),
                    invalid_at=draw(st.none() | st.integers(0, n - 1)),
                    turn_rewards=turn_rewards,
                    tool_calls=tools,
                )
            )
    return StepBatch.from_trajectories(trajs), draw(st.integers(0, 2**16))


CASES = [
    ("gae", {"gamma": 0.9, "lam": 0.8, "bootstrap_truncated": True, "invalid_penalty": 0.1}),
    ("gae", {"whiten": True}),
    ("mt_grpo", {}),
    ("mt_grpo", {"variant": "k_turn", "mode": "mean"}),
    ("mt_ppo", {"gamma": 0.95, "lam": 0.9}),
]


def run_case(name: str, opts: dict, batch: StepBatch, values: np.ndarray):
    cfg = dict(opts)
    if name != "mt_grpo":
        cfg["values"] = values
    return estimate(name, batch, **cfg)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turn_batches())
def test_properties_permutation_finite_deterministic(data):
    batch, seed = data
    rng = np.random.default_rng(seed)
    values = rng.normal(size=len(batch)) * 10
    perm = rng.permutation(len(batch))
    moved = batch.take(perm)
    for name, opts in CASES:
        adv = run_case(name, opts, batch, values)
        for key, arr in adv.arrays().items():
            assert np.all(np.isfinite(arr)), (name, key)
        again = run_case(name, opts, batch, values)
        np.testing.assert_array_equal(adv.step, again.step)
        got = run_case(name, opts, moved, values[perm])
        want, have = by_row(batch, adv.step), by_row(moved, got.step)
        for k, a in want.items():
            assert have[k] == pytest.approx(a, rel=1e-9, abs=1e-9), (name, opts, k)


@settings(max_examples=25, deadline=None)
@given(turn_batches(singleton_groups=True))
def test_mt_grpo_singleton_groups_give_zero(data):
    batch, _ = data
    for variant in ("two_phase", "k_turn"):
        np.testing.assert_array_equal(estimate("mt_grpo", batch, variant=variant).step, 0.0)


@settings(max_examples=25, deadline=None)
@given(turn_batches(constant=True))
def test_mt_grpo_zero_std_gives_zero(data):
    # all outcomes and turn rewards 0: every trajectory of a group looks the same
    batch, _ = data
    for variant in ("two_phase", "k_turn"):
        np.testing.assert_allclose(estimate("mt_grpo", batch, variant=variant).step, 0.0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(turn_batches())
def test_gae_with_exact_values_gives_zero(data):
    # gamma = lam = 1 and V_t = the reward still to come: every delta is 0, whatever the episode end
    batch, _ = data
    to_go = {}
    for tid, t, r in sorted(zip(batch.traj_id, batch.turn, batch.reward), key=lambda x: (x[0], -x[1])):
        to_go[(tid, t)] = r + to_go.get((tid, t + 1), 0.0)
    values = np.array([to_go[(tid, t)] for tid, t in zip(batch.traj_id, batch.turn)])
    adv = estimate("gae", batch, values=values, invalid_penalty=0.0)
    np.testing.assert_allclose(adv.step, 0.0, atol=1e-9 * (1 + np.abs(values).max()) * 10)
