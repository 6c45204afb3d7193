"""KTAE (agentrl/credit/ktae.py): a hand-computed 2x2 case, edge cases, options, a per-group
reference loop over token values (scipy's Fisher test) on random multi-turn batches (max |diff| 7e-16
over 90 batches), and the previous one-sort implementation (tests/ktae_reference.py) on 240 random
batches, through each way of building the tables (max |diff| 0 when written), and bitwise on random
batches of three shapes through every way of counting the tables and of computing the keys."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.stats import fisher_exact

from agentrl.credit import MissingInputError, estimate, estimator_info
from agentrl.credit.ktae import fisher_two_sided, information_gain
from agentrl.types import Step, StepBatch, Trajectory

A = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # GRPO of outcomes (1, 1, 0, 0): mean 0.5, unbiased std sqrt(1/3), eps


def asq(count, total):
    """asin(sqrt(count / total)) with the source's 1e-10 guard in the denominator (near 1 it moves the
    value by ~1e-5: asin(1 - d) = pi/2 - sqrt(2 d))."""
    return math.asin(math.sqrt(count / (total + 1e-10)))


def group(responses, outcomes, gid="g", **kw):
    """One trajectory per entry: each entry a list of turns, each turn a list of token ids."""
    return [
        Trajectory(
            gid,
            gid,
            f"{gid}/{i}",
            [Step(obs=f"o{t}", response_ids=ids) for t, ids in enumerate(turns)],
            terminated=True,
            outcome=o,
            **kw,
        )
        for i, (turns, o) in enumerate(zip(responses, outcomes))
    ]


def tokens(adv):
    return [a.tolist() for a in adv.token]


def test_hand_computed_tables_without_tf():
    # correct: [1, 2], [1, 2]; incorrect: [1, 3], [3]
    b = StepBatch.from_trajectories(group([[[1, 2]], [[1, 2]], [[1, 3]], [[3]]], [1.0, 1.0, 0.0, 0.0]))
    # token 2: a=2 b=0 c=0 d=2. Hypergeometric over k (margins 2/2, n=4): 1/6, 4/6, 1/6; observed k=2
    #   -> p = 1/6 + 1/6 = 1/3, F = exp(-2/3). IG = H(1/2) - 0 = 1 bit. Cohen's h = asin(1) - asin(0) = pi/2.
    #   z = (F + IG) * (pi/2) / 2, key = 2 sigmoid(z) - 1 = tanh(z/2)
    key2 = math.tanh((math.exp(-2 / 3) + 1.0) * (asq(2, 2) - asq(0, 2)) / 2 / 2)
    # token 3: the mirror table (a=0 b=2 c=2 d=0): key3 = -key2
    # token 1: a=2 b=1 c=0 d=1. k in {1, 2} with probabilities 1/2, 1/2 -> every table counts: p = 1, F = 0.
    #   IG = 1 - (3/4) H(2/3) - 0, H(2/3) = -(2/3)log2(2/3) - (1/3)log2(1/3). h = asin(1) - asin(sqrt(1/2)) = pi/4
    h23 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    key1 = math.tanh((1.0 - 0.75 * h23) * (asq(2, 2) - asq(1, 2)) / 2 / 2)
    adv = estimate("ktae", b, tf=False, invalid_penalty=0.0)
    assert adv.step == pytest.approx([A, A, -A, -A], abs=1e-5)
    want = [[A + key1, A + key2], [A + key1, A + key2], [-A + key1, -A - key2], [-A - key2]]
    for got, exp in zip(tokens(adv), want):
        assert got == pytest.approx(exp, abs=1e-5)
    assert key2 == pytest.approx(0.5330, abs=1e-4) and key1 == pytest.approx(0.0610, abs=1e-4)
    # alpha=0: only the information gain weighs (beta / beta)
    only_ig = estimate("ktae", b, tf=False, alpha=0.0, invalid_penalty=0.0)
    assert only_ig.token[0][1] - only_ig.step[0] == pytest.approx(
        math.tanh(1.0 * (asq(2, 2) - asq(0, 2)) / 2), abs=1e-9
    )


def test_tf_term_by_hand_and_exclusive_tokens_saturate():
    b = StepBatch.from_trajectories(group([[[1, 2]], [[1, 2]], [[1, 3]], [[3]]], [1.0, 1.0, 0.0, 0.0]))
    adv = estimate("ktae", b, invalid_penalty=0.0, scale=2.0)
    # token 1: correct side 4 tokens, 2 of them token 1; incorrect side 3 tokens, 1 of them token 1
    avg = (4 + 3) / 2
    f_c, f_w = 2 / 4, 1 / 3
    tf_c = f_c * 3 / (f_c + 2 * (0.5 + 0.5 * 4 / avg))
    tf_w = f_w * 3 / (f_w + 2 * (0.5 + 0.5 * 3 / avg))
    h23 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    x = asq(2, 2) - asq(1, 2) + tf_c / (tf_w + 1e-5) - tf_w / (tf_c + 1e-5)
    key1 = 2.0 * math.tanh((1.0 - 0.75 * h23) * x / 2 / 2)
    assert adv.token[0][0] - adv.step[0] == pytest.approx(key1, abs=1e-9)
    # token 2 only in correct rollouts: tf_c / 1e-5 is huge, the squash saturates at +scale
    assert adv.token[0][1] - adv.step[0] == pytest.approx(2.0, abs=1e-6)
    assert adv.token[3][0] - adv.step[3] == pytest.approx(-2.0, abs=1e-6)


def test_edge_cases_all_correct_singleton_and_empty_responses():
    trajs = (
        group([[[1, 2]], [[3]]], [1.0, 1.0], gid="all")  # all correct: no key tokens, A = 0
        + group([[[4, 5]]], [1.0], gid="one")  # singleton
        + group([[[]], [[6], []], [[6]]], [1.0, 0.0, 0.0], gid="empty")  # empty responses
    )
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("ktae", b, invalid_penalty=0.0)
    got = tokens(adv)
    assert got[:3] == [[0.0, 0.0], [0.0], [0.0, 0.0]]
    # group "empty": outcomes (1, 0, 0): A = (1 - 1/3)/std, std = sqrt(1/3); token 6 in both incorrect only
    a_ok = (2 / 3) / math.sqrt(1 / 3)
    assert got[3] == [] and got[5] == [] and adv.step[3] == pytest.approx(a_ok, abs=1e-5)
    assert got[4][0] == pytest.approx(adv.step[4] - 1.0, abs=1e-6)  # saturated: only in incorrect rollouts
    assert len(adv.token) == len(b) and all(np.isfinite(a).all() for a in adv.token)
    nothing = StepBatch.from_trajectories(group([[[]], [[]]], [1.0, 0.0]))
    assert tokens(estimate("ktae", nothing)) == [[], []]


def test_options_correct_success_ignore_ids_and_errors():
    trajs = group([[[1, 2]], [[1, 3]]], [1.0, 1.0])
    trajs[0].success = True
    b = StepBatch.from_trajectories(trajs)
    assert tokens(estimate("ktae", b)) == [[0.0, 0.0], [0.0, 0.0]]  # both "correct" by outcome > 0
    by_success = estimate("ktae", b, correct="success")  # now 1 correct, 1 incorrect
    assert by_success.token[0][1] > 0 > by_success.token[1][1]
    ignored = estimate("ktae", b, correct="success", ignore_token_ids=[2, 3])
    assert ignored.token[0][1] == 0.0 and ignored.token[1][1] == 0.0
    for bad in ({"correct": "reward"}, {"alpha": -1.0}, {"alpha": 0.0, "beta": 0.0}, {"tf": "yes"}):
        with pytest.raises(ValueError):
            estimate("ktae", b, **bad)
    with pytest.raises(MissingInputError, match="response_ids"):
        estimate("ktae", StepBatch.from_trajectories([Trajectory("t", "g", "x", [Step(obs="o")])]))
    info = estimator_info("ktae")
    assert info.per_token and info.fields == ("response_ids",) and not info.spans
    assert (
        info.options["alpha"] == info.options["beta"] == info.options["scale"] == 1.0 and info.options["tf"]
    )


def test_fisher_matches_scipy_and_information_gain_is_mutual_information():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 9, size=(4, 500))
    p, whole = fisher_two_sided(*t)
    want = [fisher_exact([[a, b], [c, d]]).pvalue for a, b, c, d in t.T]
    assert np.max(np.abs(p - want)) < 1e-12
    assert not whole[np.asarray(want) < 1 - 1e-9].any()
    # IG = mutual information of the table's joint distribution, in bits
    for a, b, c, d in t.T[:50]:
        n = a + b + c + d
        joint = np.array([[a, b], [c, d]]) / max(n, 1)
        px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
        mi = sum(
            joint[i, j] * math.log2(joint[i, j] / (px[i, 0] * py[0, j]))
            for i in range(2)
            for j in range(2)
            if joint[i, j] > 0
        )
        assert information_gain([a], [b], [c], [d])[0] == pytest.approx(mi, abs=1e-12)


def reference_ktae(trajs, *, alpha=1.0, beta=1.0, tf=True, scale=1.0, eps=1e-6):
    """The public formula by loops: per group, per token value, scipy's Fisher test, plain IG and TF."""
    out = {}
    groups = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t)
    for members in groups.values():
        r = np.array([t.outcome for t in members])
        adv = (r - r.mean()) / (r.std(ddof=1) + eps) if len(r) > 1 else np.zeros(len(r))
        ok = r > 0
        toks = [[i for s in t.steps for i in s.response_ids] for t in members]
        n_c, n_w = int(ok.sum()), int((~ok).sum())
        l_c = sum(len(x) for x, o in zip(toks, ok) if o)
        l_w = sum(len(x) for x, o in zip(toks, ok) if not o)
        key = {}
        for v in {i for x in toks for i in x}:
            if n_c == 0 or n_w == 0:
                key[v] = 0.0
                continue
            a = sum(1 for x, o in zip(toks, ok) if o and v in x)
            b = sum(1 for x, o in zip(toks, ok) if not o and v in x)
            c, d = n_c - a, n_w - b
            p = fisher_exact([[a, b], [c, d]]).pvalue
            F = 0.0 if p > 1 - 1e-9 else math.exp(-2 * p)

            def H(x, y):
                s = x + y
                return -sum(q / s * math.log2(q / s) for q in (x, y) if q) if s else 0.0

            n = n_c + n_w
            ig = H(n_c, n_w) - (a + b) / n * H(a, b) - (c + d) / n * H(c, d)
            x = asq(a, n_c) - asq(b, n_w)
            if tf:

                def tfv(count, length, avg=(l_c + l_w) / 2):
                    if length == 0:
                        return 0.0
                    f = count / length
                    return f * 3 / (f + 2 * (0.5 + 0.5 * length / avg))

                t_c = tfv(sum(x.count(v) for x, o in zip(toks, ok) if o), l_c)
                t_w = tfv(sum(x.count(v) for x, o in zip(toks, ok) if not o), l_w)
                x += t_c / (t_w + 1e-5) - t_w / (t_c + 1e-5)
            z = (alpha * F + beta * ig) * x / (alpha + beta)
            key[v] = scale * (2 / (1 + math.exp(-z)) - 1) if abs(z) < 700 else math.copysign(scale, z)
        for t, a_i in zip(members, adv):
            for k, s in enumerate(t.steps):
                out[(t.traj_id, k)] = [a_i + key[v] for v in s.response_ids]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_reference_loop_on_random_multi_turn_batches(seed):
    rng = np.random.default_rng(seed)
    trajs = []
    for g in range(4):
        size = int(rng.integers(1, 7))
        outcomes = rng.choice([0.0, 1.0, 0.5, -1.0], size=size)
        turns = [
            [rng.integers(0, 12, size=rng.integers(0, 6)).tolist() for _ in range(rng.integers(1, 4))]
            for _ in range(size)
        ]
        trajs += group(turns, outcomes, gid=f"g{g}")
    options = [{}, {"tf": False}, {"alpha": 0.5, "beta": 2.0, "scale": 0.3}][seed % 3]
    want = reference_ktae(trajs, **options)
    b = StepBatch.from_trajectories(trajs)
    perm = rng.permutation(len(b))
    shuffled = b.take(perm)
    adv = estimate("ktae", shuffled, invalid_penalty=0.0, **options)
    worst = 0.0
    for tid, turn, got in zip(shuffled.traj_id, shuffled.turn, adv.token):
        exp = want[(tid, int(turn))]
        assert len(got) == len(exp)
        if exp:
            worst = max(worst, float(np.max(np.abs(np.asarray(got) - exp))))
    assert worst < 1e-12


def test_huge_token_ids_take_the_lexsort_path_with_the_same_result(monkeypatch):
    import agentrl.credit.ktae as ktae_module

    trajs = group([[[1, 2], [7]], [[1, 2]], [[1, 3, 3]], [[3], []]], [1.0, 1.0, 0.0, 0.0])
    trajs += group([[[2, 9]], [[9]], [[4]]], [1.0, 0.0, 0.0], gid="h")
    b = StepBatch.from_trajectories(trajs)
    packed = tokens(estimate("ktae", b))
    monkeypatch.setattr(ktae_module, "PACK_LIMIT", 0)
    assert tokens(estimate("ktae", b)) == packed


@pytest.mark.slow
def test_speed_on_a_realistic_batch_is_reported(capsys):
    """128 groups x 8 trajectories x 40 turns of 30 tokens: 41k rows, 1.2M tokens (time printed only)."""
    rng = np.random.default_rng(0)
    trajs = []
    for g in range(128):
        outcomes = (rng.random(8) < 0.4).astype(float)
        turns = [[rng.integers(0, 2000, size=30).tolist() for _ in range(40)] for _ in range(8)]
        trajs += group(turns, outcomes, gid=f"g{g}")
    b = StepBatch.from_trajectories(trajs)
    start = time.perf_counter()
    adv = estimate("ktae", b)
    seconds = time.perf_counter() - start
    assert len(adv.token) == len(b) == 128 * 8 * 40
    with capsys.disabled():
        print(f"\nktae: {len(b)} rows, {sum(map(len, adv.token))} tokens in {seconds:.3f} s")


def random_batch(rng, n_groups=6, max_size=7, vocab=12, offset=0):
    """Groups of 1..max_size trajectories with 1-3 turns of 0-5 tokens (some empty), mixed outcomes;
    some groups all correct or all incorrect; about 30% of the ids moved up by ``offset``."""
    trajs = []
    for g in range(n_groups):
        size = int(rng.integers(1, max_size + 1))
        kind = rng.integers(0, 4)
        outcomes = (
            np.ones(size)
            if kind == 0
            else np.zeros(size)
            if kind == 1
            else rng.choice([0.0, 1.0, 0.5, -1.0], size)
        )
        turns = []
        for _ in range(size):
            traj_turns = []
            for _ in range(int(rng.integers(1, 4))):
                ids = rng.integers(0, vocab, size=int(rng.integers(0, 6)))
                ids = np.where(rng.random(ids.shape) < 0.3, offset + ids, ids)
                traj_turns.append(ids.tolist())
            turns.append(traj_turns)
        trajs += group(turns, outcomes, gid=f"g{g}")
        if rng.random() < 0.3:
            trajs[-1].success = True
    return StepBatch.from_trajectories(trajs)


@pytest.mark.parametrize("path", ["dense", "ranked", "sorted", "lexsort"])
def test_same_outputs_as_the_previous_implementation(path, monkeypatch):
    """Each way of building the tables (dense grids, dense grids over ranked ids, the packed sort, the
    lexsort) gives the frozen previous implementation's outputs on random batches with singleton
    groups, all-equal outcomes, empty responses and every option."""
    import agentrl.credit.ktae as ktae_module
    from tests.ktae_reference import reference_ktae

    if path == "ranked":  # ids up to 4040: the grids fit only over the batch's distinct ids
        monkeypatch.setattr(ktae_module, "DENSE_CELLS", 4096)
    if path in ("sorted", "lexsort"):
        monkeypatch.setattr(ktae_module, "DENSE_CELLS", 0)
    if path == "lexsort":
        monkeypatch.setattr(ktae_module, "PACK_LIMIT", 0)
    options = [
        {},
        {"tf": False},
        {"alpha": 0.0},
        {"beta": 0.0, "scale": 0.3},
        {"alpha": 0.5, "beta": 2.0, "correct": "success"},
        {"ignore_token_ids": [3, 7], "invalid_penalty": 0.0},
    ]
    used = []
    for name in ("_dense_tables", "_sorted_tables"):
        fn = getattr(ktae_module, name)

        def spy(*args, _fn=fn, _name=name):
            out = _fn(*args)
            used.append(_name if out is not None else "none")
            return out

        monkeypatch.setattr(ktae_module, name, spy)
    worst = 0.0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        b = random_batch(
            rng, vocab=int(rng.choice([3, 12, 40])), offset={"ranked": 4000, "lexsort": 2**40}.get(path, 0)
        )
        canonical = b.take(b.canonical_order())
        opts = options[seed % len(options)]
        got, want = estimate("ktae", canonical, **opts), reference_ktae(canonical, **opts)
        assert np.array_equal(got.step, want.step)
        for g_row, w_row in zip(got.token, want.token):
            assert g_row.shape == w_row.shape
            if g_row.size:
                worst = max(worst, float(np.max(np.abs(g_row - w_row))))
    assert worst <= 1e-12
    built = [u for u in used if u != "none"]
    assert len(built) == 60 and set(built) == {
        "_sorted_tables" if path in ("sorted", "lexsort") else "_dense_tables"
    }


OPTIONS = [
    {},
    {"tf": False},
    {"alpha": 0.0},
    {"beta": 0.0, "scale": 0.3},
    {"alpha": 0.5, "beta": 2.0, "correct": "success"},
    {"ignore_token_ids": [3, 7], "invalid_penalty": 0.0},
]
COUNTING = {  # the limits patched, the way the tables are then counted, the offset of some ids
    "flags": ({}, "_rollouts_flagged", 0),
    "kept": ({"DENSE_FLAGS": 0}, "_rollouts_kept", 0),
    "ranked": ({"DENSE_CELLS": 4096}, "_rollouts_flagged", 4000),
    "sorted": ({"DENSE_CELLS": 0}, "_sorted_tables", 0),  # keys table by table
    "sorted, keys per tuple": ({"DENSE_PAIRS": 0}, "_sorted_tables", 0),
    "lexsort": ({"DENSE_CELLS": 0, "PACK_LIMIT": 0}, "_sorted_tables", 2**40),
}


@pytest.mark.parametrize(
    "n_groups,max_size,vocab", [(6, 7, 12), (3, 25, 40), (10, 4, 3)], ids=["small", "uneven", "repeats"]
)
def test_every_way_of_counting_gives_bitwise_the_previous_outputs(n_groups, max_size, vocab, monkeypatch):
    """The dense grids (flags by a trajectory's place in its group side, or the kept-position pass when
    groups are too unequal for that grid), over ranked ids, the packed sort and the lexsort, each
    checked to be the way taken, give bitwise the previous one-sort implementation's outputs
    (tests/ktae_reference.py) on random batches of small groups, unequal groups up to 25 trajectories
    and 3 token ids repeated many times (keys per table where the counts do not pack, else per tuple)."""
    import agentrl.credit.ktae as ktae_module
    from tests.ktae_reference import reference_ktae

    taken: list[str] = []
    for name in ("_rollouts_flagged", "_rollouts_kept", "_sorted_tables"):
        fn = getattr(ktae_module, name)

        def spy(*args, _fn=fn, _name=name):
            out = _fn(*args)
            if out is not None:
                taken.append(_name)
            return out

        monkeypatch.setattr(ktae_module, name, spy)
    limit_names = ("DENSE_CELLS", "DENSE_PAIRS", "DENSE_FLAGS", "PACK_LIMIT")
    defaults = {name: getattr(ktae_module, name) for name in limit_names}
    for seed in range(20):
        opts = OPTIONS[seed % len(OPTIONS)]
        for limits, way, offset in COUNTING.values():
            for name, value in defaults.items():
                monkeypatch.setattr(ktae_module, name, limits.get(name, value))
            b = random_batch(np.random.default_rng(seed), n_groups, max_size, vocab, offset)
            canonical = b.take(b.canonical_order())
            taken.clear()
            got, want = estimate("ktae", canonical, **opts), reference_ktae(canonical, **opts)
            assert taken == ([way] if sum(map(len, canonical.response_ids)) else [])
            assert got.step.tobytes() == want.step.tobytes()
            assert len(got.token) == len(want.token)
            for g_row, w_row in zip(got.token, want.token):
                assert g_row.dtype == w_row.dtype and g_row.shape == w_row.shape
                assert g_row.tobytes() == w_row.tobytes()


@pytest.mark.parametrize("some_empty", [False, True])
def test_keys_per_distinct_tuple_equal_keys_per_table_bitwise(some_empty, monkeypatch):
    """key_scores computes a key once per distinct (group, a, b, freq_c, freq_w) when those pack into
    DENSE_CELLS codes, else table by table (skipping tables of no token when ``some_empty``): the two
    give the same bits on the tables that occur."""
    import agentrl.credit.ktae as ktae_module

    rng = np.random.default_rng(0)
    n_groups, n = 5, 3000
    n_c, n_w = rng.integers(0, 6, n_groups).astype(float), rng.integers(0, 6, n_groups).astype(float)
    len_c, len_w = rng.integers(0, 200, n_groups).astype(float), rng.integers(0, 200, n_groups).astype(float)
    group = rng.integers(0, n_groups, n)
    a, b = rng.integers(0, n_c[group] + 1), rng.integers(0, n_w[group] + 1)
    freq_c = np.where(a > 0, a + rng.integers(0, 9, n), 0)
    freq_w = np.where(b > 0, b + rng.integers(0, 9, n), 0)
    live = (freq_c + freq_w) > 0
    assert not live.all()
    if not some_empty:  # only tables that occur
        a, b, freq_c, freq_w, group, live = (v[live] for v in (a, b, freq_c, freq_w, group, live))
    args = (a, b, n_c, n_w, freq_c, freq_w, len_c, len_w, group)
    for options in ({}, {"alpha": 0.5, "beta": 2.0, "scale": 0.3}, {"alpha": 0.0}):
        kw = {"alpha": 1.0, "beta": 1.0, "tf": True, "scale": 1.0, **options}
        per_tuple = ktae_module.key_scores(*args, **kw, some_empty=some_empty)
        with monkeypatch.context() as patch:
            patch.setattr(ktae_module, "DENSE_CELLS", 0)  # no packing: table by table
            per_table = ktae_module.key_scores(*args, **kw, some_empty=some_empty)
        assert np.isfinite(per_tuple).all() and np.abs(per_tuple[live]).max() > 0.1
        assert per_tuple[live].tobytes() == per_table[live].tobytes()
