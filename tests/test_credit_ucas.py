"""UCAS (agentrl/credit/ucas.py): a hand-computed group, the paper's options, edge cases, the declared
``token_stats`` input, and a per-trajectory reference loop on random multi-turn batches (max |diff|
1.4e-13 over 60 batches)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from agentrl.credit import Advantages, MissingInputError, estimate, estimator_info, register_estimator
from agentrl.types import Step, StepBatch, Trajectory

EPS = 1e-6


def group(turns_of, outcomes, gid="g", valid=None):
    """One trajectory per entry of ``turns_of``: a list of turns, each a list of (certainty, logit) per token."""
    trajs = []
    for i, (turns, r) in enumerate(zip(turns_of, outcomes)):
        steps = [
            Step(
                obs=f"o{t}", response_ids=list(range(len(tok))), valid=True if valid is None else valid[i][t]
            )
            for t, tok in enumerate(turns)
        ]
        trajs.append(Trajectory(gid, gid, f"{gid}/{i}", steps, terminated=True, outcome=r))
    return trajs


_turns: dict[str, list] = {}  # traj_id -> its turns, as built


def stats_of(trajs):
    """The ``token_stats`` input of ``trajs`` (built by ``build``), one array per step row."""
    rows = [turn for t in trajs for turn in _turns[t.traj_id]]
    return {
        "self_certainty": [np.array([x[0] for x in turn], float) for turn in rows],
        "chosen_logit": [np.array([x[1] for x in turn], float) for turn in rows],
    }


def build(turns_of, outcomes, gid="g", valid=None):
    trajs = group(turns_of, outcomes, gid, valid)
    for t, turns in zip(trajs, turns_of):
        _turns[t.traj_id] = turns
    return trajs


def tokens(adv):
    return [a.tolist() for a in adv.token]


# traj 0: R = 1, one turn, (certainty, logit) = (1, 0), (2, 5), (3, 10): c = 2, logits min-max -> 0, .5, 1
# traj 1: R = 0, one turn, (4, 1), (4, 1): c = 4, constant logits -> range taken as 1 -> 0, 0
HAND = [[[(1, 0), (2, 5), (3, 10)]], [[(4, 1), (4, 1)]]]
A = 0.5 / (math.sqrt(0.5) + EPS)  # GRPO: mean 0.5, unbiased std sqrt(0.5)
H = 1 / (math.sqrt(2) + EPS)  # certainty z-score: mean 3, unbiased std sqrt(2): c^ = -H, +H


def test_hand_computed_group():
    trajs = build(HAND, [1.0, 0.0])
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("ucas", b, token_stats=stats_of(trajs))
    # m0 = exp(-0.25 * -H) (correct), m1 = exp(0.25 * H) (wrong): both exp(0.25 H)
    up = A * math.exp(0.25 * H)
    got = tokens(adv)
    assert got[0] == pytest.approx([up - 0.0, up - 0.01 * 0.5, up - 0.01 * 1.0])
    assert got[1] == pytest.approx([-up, -up])
    assert adv.step == pytest.approx([up, -up])  # A_i m_i, the per-row summary


def test_the_papers_options():
    trajs = build(HAND, [1.0, 0.0])
    b = StepBatch.from_trajectories(trajs)
    paper = {"beta_neg": 0.35, "logit_coef": 0.05, "logit_norm": "batch", "clamp": True}
    adv = estimate("ucas", b, token_stats=stats_of(trajs), **paper)
    # batch min-max over logits 0, 5, 10, 1, 1: 0, .5, 1, .1, .1
    up, down = A * math.exp(0.25 * H), -A * math.exp(0.35 * H)
    assert tokens(adv)[0] == pytest.approx([up, up - 0.025, up - 0.05])
    assert tokens(adv)[1] == pytest.approx([down - 0.005, down - 0.005])
    # clamp: a positive A_i m_i never turns a token negative (up = 0.84: tokens with 2 * l~ > up go to 0)
    strong = estimate("ucas", b, token_stats=stats_of(trajs), logit_coef=2.0, clamp=True)
    assert tokens(strong)[0] == pytest.approx([up, 0.0, 0.0])
    assert tokens(strong)[1] == pytest.approx([-up, -up])  # negative rollouts are not clamped
    loose = estimate("ucas", b, token_stats=stats_of(trajs), logit_coef=2.0)
    assert tokens(loose)[0] == pytest.approx([up, up - 1.0, up - 2.0])


def test_multi_turn_rollouts_pool_their_turns_and_row_norm_splits_them():
    # traj 0 (R=1): turns [(1, 0), (1, 4)] and [(3, 2)] -> c = 5/3, logits over the trajectory 0, 4, 2 -> 0, 1, .5
    # traj 1 (R=0): one turn [(2, 3)] -> c = 2, one logit -> 0
    turns = [[[(1, 0), (1, 4)], [(3, 2)]], [[(2, 3)]]]
    trajs = build(turns, [1.0, 0.0], gid="m")
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("ucas", b, token_stats=stats_of(trajs))
    # certainty z-scores: mean 11/6, unbiased std |5/3 - 2| / sqrt(2) = sqrt(2)/6: c^0 = -(1/6)/(sqrt2/6 + eps)
    h = (1 / 6) / (math.sqrt(2) / 6 + EPS)
    up = A * math.exp(0.25 * h)
    assert tokens(adv) == [
        pytest.approx([up, up - 0.01]),
        pytest.approx([up - 0.005]),
        pytest.approx([-up]),  # wrong, c^1 = +h: m = exp(0.25 h)
    ]
    per_row = estimate("ucas", b, token_stats=stats_of(trajs), logit_norm="row")
    assert tokens(per_row)[1] == pytest.approx([up])  # a one-token turn normalises to 0


def test_edge_cases_equal_outcomes_singletons_empty_responses_and_penalty():
    # all-equal outcomes: A = 0, only the logit term remains (as the source)
    trajs = build(HAND, [1.0, 1.0], gid="eq")
    adv = estimate("ucas", StepBatch.from_trajectories(trajs), token_stats=stats_of(trajs))
    assert tokens(adv) == [pytest.approx([0.0, -0.005, -0.01]), pytest.approx([0.0, 0.0])]
    # a singleton: A = 0 (agentrl's GRPO) and c^ = 0
    solo = build([HAND[0]], [1.0], gid="solo")
    adv = estimate("ucas", StepBatch.from_trajectories(solo), token_stats=stats_of(solo))
    assert tokens(adv) == [pytest.approx([0.0, -0.005, -0.01])]
    # a rollout without response tokens: no c, left out of the certainty statistics
    empty = build([HAND[0], HAND[1], [[]]], [1.0, 0.0, 0.5], gid="e")
    adv = estimate("ucas", StepBatch.from_trajectories(empty), token_stats=stats_of(empty))
    a = (1.0 - 0.5) / (0.5 + EPS)  # outcomes 1, 0, .5: mean .5, unbiased std .5
    up = a * math.exp(0.25 * H)  # certainty statistics over the first two only, as in the hand case
    assert tokens(adv)[0] == pytest.approx([up, up - 0.005, up - 0.01]) and tokens(adv)[2] == []
    assert adv.step[2] == 0.0  # R = mean: A = 0
    # the invalid-action penalty: every token of the invalid row, after shaping (default 0.1)
    bad = build(HAND, [1.0, 0.0], gid="inv", valid=[[True], [False]])
    b = StepBatch.from_trajectories(bad)
    pen = estimate("ucas", b, token_stats=stats_of(bad))
    free = estimate("ucas", b, token_stats=stats_of(bad), invalid_penalty=0.0)
    assert tokens(pen)[0] == tokens(free)[0]
    assert np.allclose(pen.token[1], free.token[1] - 0.1) and pen.step[1] == pytest.approx(free.step[1] - 0.1)


def test_token_stats_input_is_checked():
    trajs = build(HAND, [1.0, 0.0], gid="chk")
    b = StepBatch.from_trajectories(trajs)
    good = stats_of(trajs)
    with pytest.raises(MissingInputError, match="token_stats"):
        estimate("ucas", b)
    with pytest.raises(MissingInputError, match="chosen_logit"):
        estimate("ucas", b, token_stats={"self_certainty": good["self_certainty"]})
    with pytest.raises(ValueError, match="row 1 has 2 response tokens"):
        estimate("ucas", b, token_stats={**good, "chosen_logit": [good["chosen_logit"][0], np.zeros(3)]})
    with pytest.raises(ValueError, match="arrays for 2 rows"):
        estimate("ucas", b, token_stats={**good, "chosen_logit": good["chosen_logit"][:1]})
    with pytest.raises(ValueError, match="NaN"):
        estimate("ucas", b, token_stats={**good, "self_certainty": [np.full(3, np.nan), np.zeros(2)]})
    for bad in ({"logit_norm": "group"}, {"beta_pos": -1.0}, {"clamp": 1}):
        with pytest.raises(ValueError):
            estimate("ucas", b, token_stats=good, **bad)
    info = estimator_info("ucas")
    assert info.per_token and info.token_stats == ("self_certainty", "chosen_logit")
    assert info.inputs == ("token_stats",) and info.fields == ("response_ids",)


def test_registration_rules_for_token_stats():
    def fn(batch, *, token_stats=None):
        return Advantages(step=np.zeros(len(batch)))

    with pytest.raises(ValueError, match="unknown token_stats"):
        register_estimator(
            "test_ts1", fields=("response_ids",), inputs=("token_stats",), token_stats=("foo",)
        )(fn)
    with pytest.raises(ValueError, match="go together"):
        register_estimator("test_ts2", fields=("response_ids",), token_stats=("entropy",))(fn)
    with pytest.raises(ValueError, match="response_ids"):
        register_estimator("test_ts3", inputs=("token_stats",), token_stats=("entropy",))(fn)


def reference(batch: StepBatch, stats, *, beta_pos, beta_neg, logit_coef, logit_norm, clamp, invalid_penalty):
    """The formula with loops: per group, trajectory, row and token (statistics.stdev = torch.std)."""
    trajs: dict[int, list[int]] = {}
    for r in range(len(batch)):
        trajs.setdefault(int(batch.traj_idx[r]), []).append(r)
    for rows in trajs.values():
        rows.sort(key=lambda r: batch.turn[r])
    groups: dict[int, list[int]] = {}
    for t, rows in trajs.items():
        groups.setdefault(int(batch.group_idx[rows[0]]), []).append(t)
    out = [np.zeros(len(batch.response_ids[r])) for r in range(len(batch))]
    all_logits = [x for r in range(len(batch)) for x in stats["chosen_logit"][r]]

    def minmax(xs, lo, hi):
        rng = hi - lo if hi - lo >= 1e-8 else 1.0
        return [(x - lo) / rng for x in xs]

    for members in groups.values():
        outcome = {t: batch.outcome[trajs[t][0]] for t in members}
        cert = {}
        for t in members:
            toks = [x for r in trajs[t] for x in stats["self_certainty"][r]]
            if toks:
                cert[t] = sum(toks) / len(toks)
        mean_r = sum(outcome.values()) / len(members)
        std_r = statistics.stdev(outcome.values()) if len(members) > 1 else 0.0
        mean_c = sum(cert.values()) / len(cert) if cert else 0.0
        std_c = statistics.stdev(cert.values()) if len(cert) > 1 else 0.0
        for t in members:
            a = (outcome[t] - mean_r) / (std_r + EPS) if len(members) > 1 else 0.0
            c_hat = (cert[t] - mean_c) / (std_c + EPS) if t in cert and len(cert) > 1 else 0.0
            m = math.exp(-beta_pos * c_hat) if outcome[t] - mean_r > 0 else math.exp(beta_neg * c_hat)
            base = a * m
            traj_logits = [x for r in trajs[t] for x in stats["chosen_logit"][r]]
            for r in trajs[t]:
                own = list(stats["chosen_logit"][r])
                pool = {"trajectory": traj_logits, "row": own, "batch": all_logits}[logit_norm]
                if not own:
                    continue
                norm = minmax(own, min(pool), max(pool))
                vals = []
                for n_ in norm:
                    v = base - logit_coef * n_
                    if clamp and base > 0:
                        v = max(v, 0.0)
                    vals.append(v - (invalid_penalty if not batch.valid[r] else 0.0))
                out[r] = np.array(vals)
    return out


def random_batch(rng, n_groups):
    trajs, stats_sc, stats_cl = [], {}, {}
    for g in range(n_groups):
        size = int(rng.integers(1, 6))
        for i in range(size):
            turns = int(rng.integers(1, 4))
            steps = []
            for t in range(turns):
                k = int(rng.integers(0, 5))
                steps.append(
                    Step(obs="o", response_ids=list(rng.integers(0, 50, k)), valid=bool(rng.random() > 0.2))
                )
                stats_sc[(g, i, t)] = rng.normal(3.0, 1.0, k)
                stats_cl[(g, i, t)] = np.round(rng.normal(0.0, 4.0, k), int(rng.integers(0, 3)))
            r = float(rng.choice([0.0, 0.5, 1.0]))
            trajs.append(Trajectory(f"t{g}", f"g{g}", f"g{g}/{i}", steps, terminated=True, outcome=r))
    order = rng.permutation(len(trajs))
    trajs = [trajs[k] for k in order]
    b = StepBatch.from_trajectories(trajs)
    keys = [
        (int(t.group_id[1:]), int(t.traj_id.split("/")[1]), k) for t in trajs for k in range(len(t.steps))
    ]
    return b, {"self_certainty": [stats_sc[k] for k in keys], "chosen_logit": [stats_cl[k] for k in keys]}


@pytest.mark.parametrize("seed", range(60))
def test_matches_a_per_trajectory_reference_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    b, stats = random_batch(rng, int(rng.integers(1, 5)))
    perm = rng.permutation(len(b))
    b_perm = b.take(perm)  # not canonical: estimate maps results (and the token statistics) back
    stats_perm = {k: [v[i] for i in perm] for k, v in stats.items()}
    opts = {
        "beta_pos": float(rng.choice([0.25, 0.5])),
        "beta_neg": float(rng.choice([0.25, 0.35])),
        "logit_coef": float(rng.choice([0.01, 0.05, 1.0])),
        "logit_norm": str(rng.choice(["trajectory", "row", "batch"])),
        "clamp": bool(rng.random() > 0.5),
        "invalid_penalty": float(rng.choice([0.0, 0.1])),
    }
    got = estimate("ucas", b_perm, token_stats=stats_perm, **opts)
    want = reference(b_perm, stats_perm, **opts)
    diffs = [np.max(np.abs(g - w)) for g, w in zip(got.token, want) if len(w)]
    assert not diffs or max(diffs) < 1e-12
    assert [len(a) for a in got.token] == [len(r) for r in b_perm.response_ids]
