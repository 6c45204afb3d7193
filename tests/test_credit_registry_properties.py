"""Properties every registered estimator must have, checked on random batches (hypothesis).

This runs over ``available_estimators()``, so an estimator added later is covered without
touching this file: inputs it declares (per-row values, a dict by head for several value heads,
the learner's per-token statistics) are synthesised.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.credit import available_estimators, estimate, estimator_info
from agentrl.types import Step, StepBatch, Trajectory

REWARDS = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 10.0]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
)


@st.composite
def batches(draw) -> tuple[list[Trajectory], np.random.Generator]:
    n_groups = draw(st.integers(1, 3))
    trajs = []
    for g in range(n_groups):
        for i in range(draw(st.integers(1, 4))):
            length = draw(st.integers(1, 5))
            steps = []
            for t in range(length):
                switch = draw(st.sampled_from(["KEEP", "SWITCH"]))
                steps.append(
                    Step(
                        obs=f"o{t}",
                        action=draw(st.sampled_from(["a", "b"])),
                        reward=draw(REWARDS),
                        valid=draw(st.booleans()),
                        state_key=draw(st.sampled_from(["s0", "s1", "s2"])),
                        response_ids=draw(st.lists(st.integers(0, 5), max_size=4)),
                        turn_reward=draw(st.sampled_from([0.0, 1.0, 0.5])),
                        info={
                            "tool_call": draw(st.booleans()),
                            "switch": switch,
                            "subgoal": draw(st.sampled_from(["x", "y"])),
                        },
                    )
                )
            trunc = draw(st.booleans())
            trajs.append(
                Trajectory(
                    f"task{g}",
                    f"g{g}",
                    f"g{g}/{i}",
                    steps,
                    terminated=not trunc,
                    truncated=trunc,
                    info={"value_only": draw(st.booleans())},  # chain rollouts' mark (spo_chain)
                )
            )
    seed = draw(st.integers(0, 2**16))
    return trajs, np.random.default_rng(seed)


def inputs_for(name: str, batch: StepBatch, rng: np.random.Generator) -> dict:
    info = estimator_info(name)
    cfg = {}
    for key in info.inputs:
        if key == "values" and len(info.value_heads) > 1:  # HiPER, SPA-RL
            cfg[key] = {h: rng.normal(size=len(batch)) for h in info.value_heads}
        elif key == "token_stats":  # UCAS: one array per row, aligned with its response tokens
            cfg[key] = {s: [rng.normal(size=len(t)) for t in batch.response_ids] for s in info.token_stats}
        else:
            cfg[key] = rng.normal(size=len(batch))
    return cfg


def permuted(val, perm: np.ndarray):
    """A per-row input (array, dict of arrays, dict of per-row lists) in the rows' new order."""
    if isinstance(val, dict):
        return {h: permuted(v, perm) for h, v in val.items()}
    if isinstance(val, list):
        return [val[i] for i in perm]
    return val[perm]


def keyed(batch: StepBatch, arr: np.ndarray) -> dict:
    return {(tid, int(t)): a for tid, t, a in zip(batch.traj_id, batch.turn, arr)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_every_estimator_is_finite_deterministic_and_follows_ids(data):
    trajs, rng = data
    batch = StepBatch.from_trajectories(trajs)
    perm = rng.permutation(len(batch))
    shuffled = batch.take(perm)
    for name in available_estimators():
        cfg = inputs_for(name, batch, rng)
        adv = estimate(name, batch, **cfg)
        for key, arr in adv.arrays().items():
            assert arr.shape == (len(batch),), (name, key)
            assert np.all(np.isfinite(arr.astype(np.float64))), (name, key)
        again = estimate(name, batch, **cfg)
        np.testing.assert_array_equal(adv.step, again.step, err_msg=name)
        if adv.token is not None:
            assert [len(a) for a in adv.token] == [len(t) for t in batch.response_ids], name
        shuffled_cfg = {k: permuted(val, perm) for k, val in cfg.items()}
        moved = estimate(name, shuffled, **shuffled_cfg)
        if adv.token is not None:  # per-token output follows the row ids too
            by_id = dict(zip(zip(batch.traj_id, batch.turn.tolist()), adv.token))
            for k, a in zip(zip(shuffled.traj_id, shuffled.turn.tolist()), moved.token):
                np.testing.assert_allclose(a, by_id[k], rtol=1e-9, atol=1e-9, err_msg=name)
        want, got = keyed(batch, adv.step), keyed(shuffled, moved.step)
        for k in want:
            assert np.isclose(want[k], got[k], rtol=1e-9, atol=1e-9 * (1 + abs(want[k]))), (
                name,
                k,
                want[k],
                got[k],
            )


@settings(max_examples=25, deadline=None)
@given(batches(), st.sampled_from([0.0, 1.0, 7.0]))
def test_equal_outcomes_and_rewards_give_zero_outcome_credit(data, value):
    trajs, _ = data
    for t in trajs:
        for s in t.steps:
            s.reward, s.valid = 0.0, True
        t.steps[-1].reward = value
        t.outcome = value
    batch = StepBatch.from_trajectories(trajs)
    for name in ("grpo", "rloo", "reinforce_pp"):
        np.testing.assert_allclose(estimate(name, batch).step, 0.0, atol=1e-9, err_msg=name)
