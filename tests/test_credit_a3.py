"""A³ (``a3``): numbers worked out by hand, the fixed-count single-linkage cut, edge cases, and a
comparison with a slow reference written from the authors' code (Hoyant-Su/Agentic-RL-A3,
``algo/A3_algo.py``) on random batches: loops over groups, turns, pairs and trajectories.

Largest difference seen against the reference: 1.0e-15 (exact and token_edit clusters, both
``trie_rows``, 30 random batches plus synthetic rollouts and a 70-trajectory group).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.credit import estimate, estimator_info
from agentrl.credit.a3 import Grid, cut_token_edit, exact_reps, snippet_slices, token_table
from agentrl.credit.ops import layout
from agentrl.eval.synthetic_rollouts import synthetic_trajectories
from agentrl.types import Step, StepBatch, Trajectory, normalize_action

EPS = 1e-6
SCALE0 = 0.5 + EPS  # MAD 0 -> scale max(0, 0.5) + eps


def traj(tid: str, actions: list[str], outcome: float, group: str = "g", **kw) -> Trajectory:
    steps = [Step(obs=f"o{t}", action=a, state_key=f"s{t}") for t, a in enumerate(actions)]
    steps[-1].reward = outcome
    return Trajectory(task_id=group, group_id=group, traj_id=tid, steps=steps, terminated=True, **kw)


def advantages(trajs: list[Trajectory], **options) -> dict[tuple[str, int], float]:
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("a3", b, **options).step
    return {(tid, int(t)): float(a) for tid, t, a in zip(b.traj_id, b.turn, adv)}


# ----------------------------------------------------------------------------- slow reference


def _lower_median(values: list[float]) -> float:
    return sorted(values)[(len(values) - 1) // 2]


def _bounded(x: dict, group_of: dict, eps: float) -> dict:
    """tanh((x - med) / (max(1.4826 MAD, 0.5) + eps)) per key, statistics over its group's keys."""
    members: dict = {}
    for key in x:
        members.setdefault(group_of[key], []).append(key)
    out = {}
    for keys in members.values():
        center = _lower_median([x[k] for k in keys])
        mad = _lower_median([abs(x[k] - center) for k in keys])
        scale = max(mad * 1.4826, 0.5) + eps
        for k in keys:
            out[k] = math.tanh((x[k] - center) / scale)
    return out


def _levenshtein(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i]
        for j in range(1, len(b) + 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])))
        prev = cur
    return prev[-1]


def _find(parent: list[int], x: int) -> int:
    while parent[x] != x:
        x = parent[x]
    return x


def _components(n: int, linked) -> list[int]:
    """Union-find over all pairs (i < j) with linked(i, j); a root id per node."""
    parent = list(range(n))
    for i in range(n):
        for j in range(i + 1, n):
            if linked(i, j):
                ri, rj = _find(parent, i), _find(parent, j)
                if ri != rj:
                    parent[rj] = ri
    return [_find(parent, i) for i in range(n)]


def kruskal_cut(dist: list[list[float]], k: int) -> list[int]:
    """Single linkage stopped at k components (edges by distance, ties in (i, j) order); labels
    numbered by first appearance."""
    m = len(dist)
    if k >= m:
        return list(range(m))
    if k <= 1:
        return [0] * m
    edges = sorted(((dist[i][j], i, j) for i in range(m) for j in range(i + 1, m)), key=lambda e: e[0])
    parent = list(range(m))
    comps = m
    for _, i, j in edges:
        if comps <= k:
            break
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            parent[rj] = ri
            comps -= 1
    names: dict[int, int] = {}
    return [names.setdefault(_find(parent, i), len(names)) for i in range(m)]


def reference_a3(
    trajs: list[Trajectory],
    *,
    clusters: str = "exact",
    trie_rows: str = "first",
    scopes: tuple[int, ...] = (1, 2, 3, -1),
    scope_weights: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25),
    min_count: int = 2,
    w_trie: float = 0.65,
    w_tree: float = 1.0,
    adv_bound: float = 1.1,
    support_prior: float = 0.1,
    decision_gamma: float = 0.9,
    tree_tau: float = 0.05,
    time_decay: float = 0.84,
    eps: float = 1e-6,
) -> dict[tuple[str, int], float]:
    trajs = [t for t in trajs if t.steps]
    acts = {t.traj_id: [normalize_action(s.action) for s in t.steps] for t in trajs}
    R = {t.traj_id: float(t.outcome) for t in trajs}
    groups: dict[str, list[str]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t.traj_id)
    group_of = {tid: g for g, tids in groups.items() for tid in tids}
    rows = [(tid, k) for t in trajs for tid in [t.traj_id] for k in range(len(t.steps))]

    backbone = _bounded(R, group_of, eps)

    w_trie_s = [w / (sum(scope_weights) + 1e-12) for w in scope_weights]
    labels: dict[tuple[str, int], list[int]] = {r: [] for r in rows}
    trie_raw: dict[tuple[str, int], float] = dict.fromkeys(rows, 0.0)
    for tids in groups.values():
        for k in range(max(len(acts[t]) for t in tids)):
            here = [t for t in tids if len(acts[t]) > k]
            m = len(here)
            for si, s in enumerate(scopes):
                snippets = [acts[t] if s == -1 else acts[t][max(0, k - s + 1) : k + 1] for t in here]
                if clusters == "exact":
                    dist = [[0.0 if p == q else 1.0 for q in snippets] for p in snippets]
                else:
                    words = [[w for a in snip for w in a.split()] for snip in snippets]
                    dist = [[_levenshtein(p, q) / max(len(p), len(q), 1) for q in words] for p in words]
                lab = kruskal_cut(dist, max(1, min(m, math.ceil(m / min_count))))
                for i, t in enumerate(here):
                    labels[(t, k)].append(lab[i])
                    mates = [here[j] for j in range(m) if lab[j] == lab[i] and j != i]
                    loo = sum(R[x] for x in mates) / len(mates) if mates else R[t]
                    trie_raw[(t, k)] += w_trie_s[si] * (R[t] - loo)

    if trie_rows == "first":
        first = _bounded({t: trie_raw[(t, 0)] for t in R}, group_of, eps)
        trie = {(t, k): first[t] for t, k in rows}
    else:
        trie = _bounded(trie_raw, {(t, k): (group_of[t], k) for t, k in rows}, eps)

    w_tree_s = [w / (sum(scope_weights) + 1e-9) for w in scope_weights]

    def ham(p: str, q: str, t: int) -> float:
        acc = 0.0
        for si in range(len(scopes)):
            acc += w_tree_s[si] * float(labels[(p, t)][si] != labels[(q, t)][si])
        return acc

    gain = dict.fromkeys(rows, 0.0)
    support = dict.fromkeys(rows, 0.0)
    for tids in groups.values():
        for k in range(max(len(acts[t]) for t in tids)):
            here = [t for t in tids if len(acts[t]) > k]
            raw = [time_decay**j for j in range(k)]
            tw = [r / (sum(raw) + 1e-9) for r in raw]

            def same_state(i: int, j: int, here=here, k=k, tw=tw) -> bool:
                return sum(tw[t] * ham(here[i], here[j], t) for t in range(k)) <= tree_tau

            roots = _components(len(here), same_state)
            for root in set(roots):
                bucket = [here[i] for i in range(len(here)) if roots[i] == root]
                branch_root = _components(
                    len(bucket), lambda i, j, b=bucket, k=k: ham(b[i], b[j], k) <= tree_tau
                )
                if len(bucket) < 2 or len(set(branch_root)) < 2:
                    continue
                parent = sum(R[t] for t in bucket) / len(bucket)
                for br in set(branch_root):
                    branch = [bucket[i] for i in range(len(bucket)) if branch_root[i] == br]
                    shrink = len(branch) / (len(branch) + support_prior + eps)
                    for t in branch:
                        gain[(t, k)] = shrink * (sum(R[x] for x in branch) / len(branch) - parent)
                        support[(t, k)] = shrink
    tree = {}
    for t in R:
        run_g = run_s = 0.0
        for k in reversed(range(len(acts[t]))):
            run_g = gain[(t, k)] + decision_gamma * run_g
            run_s = support[(t, k)] + decision_gamma * run_s
            tree[(t, k)] = run_g * (run_s / (run_s + support_prior + eps))

    def unit(x: dict) -> dict:
        mae = sum(abs(x[r]) for r in rows) / len(rows) + 1e-9
        return {r: x[r] / mae for r in rows}

    b_n, tr_n, tc_n = unit({(t, k): backbone[t] for t, k in rows}), unit(trie), unit(tree)
    return {
        r: adv_bound * math.tanh((b_n[r] + w_trie * tr_n[r] + w_tree * tc_n[r]) / adv_bound) for r in rows
    }


# ----------------------------------------------------------------------------- by hand


def test_registered_with_gspo_loss_and_the_authors_defaults():
    info = estimator_info("a3")
    assert info.loss == "gspo"  # the authors train A3 with the GSPO sequence-ratio loss
    assert info.fields == () and info.inputs == ()
    assert info.options["scopes"] == (1, 2, 3, -1) and info.options["scope_weights"] == (0.25,) * 4
    assert (info.options["w_trie"], info.options["w_tree"], info.options["adv_bound"]) == (0.65, 1.0, 1.1)
    assert (info.options["clusters"], info.options["trie_rows"]) == ("exact", "first")


def test_one_turn_group_by_hand():
    # actions x, x, y, z with outcomes 1, 0, 0, 0 (one turn each, so every scope sees one action)
    got = advantages(
        [traj("a", ["x"], 1.0), traj("b", ["x"], 0.0), traj("c", ["y"], 0.0), traj("d", ["z"], 0.0)]
    )
    # backbone: lower median of (0, 0, 0, 1) = 0, MAD 0 -> b = tanh(R / 0.500001): (tanh 2, 0, 0, 0)
    bb = [math.tanh(1 / SCALE0), 0.0, 0.0, 0.0]
    # cut: m = 4 -> keep ceil(4/2) = 2 clusters; classes {a,b}, {c}, {d}: 3 > 2, so the first two classes
    # by first appearance merge: {a, b, c}, {d}. LOO residual: a 1 - (0+0)/2 = 1, b 0 - (1+0)/2 = -.5,
    # c -.5, d alone 0; every scope alike, weights 0.25 each (/ (1 + 1e-12))
    raw = [r / (1 + 1e-12) for r in (1.0, -0.5, -0.5, 0.0)]
    # bounded: lower median of (-.5, -.5, 0, 1) = -.5, |dev| (1.5, 0, .5, 0) -> MAD 0 -> scale .500001
    tr = [math.tanh((r + 0.5 / (1 + 1e-12)) / SCALE0) for r in raw]
    # tree: turn 0 -> one state bucket; branches {a, b, c} (mean 1/3) and {d} (mean 0), parent 1/4
    s3, s1 = 3 / (3 + 0.1 + EPS), 1 / (1 + 0.1 + EPS)
    gain = [s3 * (1 / 3 - 0.25)] * 3 + [s1 * (0 - 0.25)]
    sup = [s3] * 3 + [s1]
    tc = [g * s / (s + 0.1 + EPS) for g, s in zip(gain, sup)]

    def unit(x):
        mae = sum(map(abs, x)) / len(x) + 1e-9
        return [v / mae for v in x]

    want = [1.1 * math.tanh((b + 0.65 * t + 1.0 * c) / 1.1) for b, t, c in zip(unit(bb), unit(tr), unit(tc))]
    assert [got[(tid, 0)] for tid in "abcd"] == pytest.approx(want, rel=1e-12)


def test_two_turn_tree_gain_runs_backward():
    # two trajectories share turn 0 ("go") and split at turn 1 ("left" wins, "right" loses)
    trajs = [traj("w", ["go", "left"], 1.0), traj("l", ["go", "right"], 0.0)]
    got = advantages(trajs, w_trie=0.0)
    # m = 2 -> keep 1: every scope's cluster is the pair -> LOO residual R_i - R_j: trie carries the
    # outcome gap; backbone: lower median 0, tanh(1/.500001) for w, 0 for l
    # tree at turn 1: state bucket {w, l} (same past labels), branches by current labels: scope 1
    # ("left" vs "right") is one cluster (keep 1) as are all scopes -> one branch -> no gain.
    # turn 0: one branch as well -> the tree term is 0 everywhere: A = 1.1 tanh(b_n / 1.1)
    b = math.tanh(1 / SCALE0)
    b_n = b / (2 * b / 4 + 1e-9)  # mean |b| over the 4 rows = b/2
    assert got[("w", 0)] == pytest.approx(1.1 * math.tanh(b_n / 1.1), rel=1e-12)
    assert got[("w", 1)] == got[("w", 0)]
    assert got[("l", 0)] == got[("l", 1)] == 0.0
    # three trajectories: the cut keeps 2 clusters, and the whole-trajectory scope (-1) sees the
    # future, so at turn 0 the shared "go" of w and l already sits in different branches: w's turn 0
    # gets the winning branch's gain, l's the losing one's; turn 1 has no shared state bucket (the
    # past vectors differ by 0.25 > tree_tau) and no gain
    trajs3 = [*trajs, traj("l2", ["go", "right"], 0.0)]
    got3 = advantages(trajs3, w_trie=0.0)
    assert got3 == pytest.approx(reference_a3(trajs3, w_trie=0.0), abs=1e-12)
    assert got3[("w", 0)] > got3[("w", 1)] and got3[("l", 0)] < got3[("l", 1)]


def test_fixed_count_cut_matches_kruskal_on_small_cells():
    # one cell per group at turn 0; the cut keeps ceil(m/2) clusters whatever the distances
    cases = [
        "xxxx",  # identical actions are split: {0,1,2}, {3}
        "xyzw",  # distinct ones are merged in (i, j) order: {0,1,2}, {3}
        "xxyy",
        "xyx",
        "xy",
        "x",
        "xyyzz",  # keep 3 = the 3 classes
        "xyzzw",  # keep 3 < 4 classes: x and y merge
    ]
    for actions in cases:
        trajs = [traj(f"{actions}/{i}", [a], 0.0, group=actions) for i, a in enumerate(actions)]
        b = StepBatch.from_trajectories(trajs)
        lay = layout(b)
        grid = Grid(b, lay)
        rep = exact_reps(grid, b.action_key, (1,), 2)[0]
        got = grid.gather(rep)
        m = len(actions)
        want = kruskal_cut(
            [[0.0 if p == q else 1.0 for q in actions] for p in actions], max(1, math.ceil(m / 2))
        )
        # same partition: rows share a representative iff they share a reference label
        assert [[got[i] == got[j] for j in range(m)] for i in range(m)] == [
            [want[i] == want[j] for j in range(m)] for i in range(m)
        ], actions


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=9), st.integers(1, 4))
def test_closed_form_cut_is_kruskal(actions, min_count):
    trajs = [traj(f"t{i}", [a], 0.0) for i, a in enumerate(actions)]
    b = StepBatch.from_trajectories(trajs)
    grid = Grid(b, layout(b))
    got = grid.gather(exact_reps(grid, b.action_key, (1,), min_count)[0])
    m = len(actions)
    want = kruskal_cut(
        [[0.0 if p == q else 1.0 for q in actions] for p in actions], max(1, min(m, math.ceil(m / min_count)))
    )
    assert all((got[i] == got[j]) == (want[i] == want[j]) for i in range(m) for j in range(m))


def test_token_edit_clusters_near_identical_actions():
    actions = ["take apple", "open fridge", "go to shelf 1", "go to shelf 2"]
    trajs = [traj(f"t{i}", [a], 0.0) for i, a in enumerate(actions)]
    b = StepBatch.from_trajectories(trajs)
    lay = layout(b)
    grid = Grid(b, lay)
    tokens, offsets = token_table(b)
    rep = grid.gather(cut_token_edit(grid, snippet_slices(lay, offsets, 1), tokens, 2))
    # word edit distances / longer length: d(2,3) = 1/4, every other pair shares no word -> 1.
    # keep 2: (2,3) merges first, then the first tie (0,1) -> {0,1}, {2,3}
    assert rep[0] == rep[1] != rep[2] == rep[3]
    # exact equality: four classes for two clusters -> the first three classes merge: {0,1,2}, {3}
    exact = grid.gather(exact_reps(grid, b.action_key, (1,), 2)[0])
    assert exact[0] == exact[1] == exact[2] != exact[3]


# ----------------------------------------------------------------------------- edge cases


def test_singleton_group_and_equal_outcomes_give_zero():
    assert advantages([traj("solo", ["a", "b"], 3.0)]) == {("solo", 0): 0.0, ("solo", 1): 0.0}
    same = [traj(f"t{i}", ["a", "b", "c"][: i + 1], 1.0) for i in range(3)]
    assert set(advantages(same).values()) == {0.0}


def test_truncation_and_invalid_flags_do_not_change_credit():
    # A3 reads outcomes and action texts only: truncated episodes are scored by their outcome, invalid
    # actions cluster by their text (the authors' run disables the invalid-action penalty)
    base = [traj("a", ["x", "y"], 1.0), traj("b", ["x", "z"], 0.0), traj("c", ["w"], 0.0)]
    flagged = [traj("a", ["x", "y"], 1.0), traj("b", ["x", "z"], 0.0, truncated=True), traj("c", ["w"], 0.0)]
    flagged[1].terminated = False
    flagged[0].steps[1].valid = False
    assert advantages(flagged) == advantages(base)


def test_trie_rows_first_is_trajectory_level_and_per_turn_is_not():
    trajs = synthetic_trajectories(3, n=6, max_steps=8, seed=5)
    b = StepBatch.from_trajectories(trajs)
    lay = layout(b)
    no_tree = estimate("a3", b, w_tree=0.0).step  # backbone + trie only
    for s in range(lay.n_traj):
        rows = lay.first[s] + np.arange(lay.lengths[s])
        assert np.all(no_tree[rows] == no_tree[rows[0]])
    per_turn = estimate("a3", b, w_tree=0.0, trie_rows="per_turn").step
    assert any(np.ptp(per_turn[lay.first[s] + np.arange(lay.lengths[s])]) > 0 for s in range(lay.n_traj))


def test_bounded_and_finite_on_extreme_outcomes():
    trajs = [traj(f"t{i}", ["a", "b"][: 1 + i % 2], r) for i, r in enumerate([1e6, -1e6, 0.0, 5.0, 1e-9])]
    adv = estimate("a3", StepBatch.from_trajectories(trajs)).step
    assert np.all(np.isfinite(adv)) and np.all(np.abs(adv) <= 1.1)


def test_options_are_validated():
    b = StepBatch.from_trajectories([traj("a", ["x"], 1.0), traj("b", ["y"], 0.0)])
    for bad, match in [
        ({"clusters": "ast"}, "clusters"),
        ({"trie_rows": "last"}, "trie_rows"),
        ({"scopes": (1, 0)}, "scopes"),
        ({"scopes": ()}, "scopes"),
        ({"scopes": (1, 2), "scope_weights": (1.0,)}, "scope_weights"),
        ({"scope_weights": (0.0, 0.0, 0.0, 0.0)}, "scope_weights"),
        ({"min_count": 0}, "min_count"),
        ({"adv_bound": 0.0}, "adv_bound"),
        ({"decision_gamma": 1.5}, "decision_gamma"),
        ({"time_decay": 0.0}, "time_decay"),
        ({"tree_tau": -1.0}, "tree_tau"),
        ({"w_trie": math.nan}, "w_trie"),
        ({"gamma": 0.9}, "unknown option"),
    ]:
        with pytest.raises(ValueError, match=match):
            estimate("a3", b, **bad)


# ----------------------------------------------------------------------------- against the reference


def random_trajs(rng: np.random.Generator, n_groups: int, vocab: list[str]) -> list[Trajectory]:
    out = []
    for g in range(n_groups):
        for i in range(int(rng.integers(1, 7))):
            length = int(rng.integers(1, 6))
            actions = [vocab[int(rng.integers(len(vocab)))] for _ in range(length)]
            outcome = float(rng.choice([0.0, 1.0, 0.5, -1.0, float(rng.normal())]))
            out.append(traj(f"g{g}/{i}", actions, outcome, group=f"g{g}"))
    rng.shuffle(out)  # groups interleave in the batch
    return out


VOCAB = ["go north", "go  North", "take key", "take key 2", "open door", "open the door now"]


@pytest.mark.parametrize("clusters", ["exact", "token_edit"])
@pytest.mark.parametrize("trie_rows", ["first", "per_turn"])
def test_matches_reference_on_random_batches(clusters, trie_rows):
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(30):
        trajs = random_trajs(rng, int(rng.integers(1, 4)), VOCAB[: int(rng.integers(2, len(VOCAB) + 1))])
        opts = {"clusters": clusters, "trie_rows": trie_rows}
        if rng.random() < 0.3:
            opts.update(scopes=(2, -1), scope_weights=(0.7, 0.3), min_count=3, tree_tau=0.3, time_decay=0.5)
        got, want = advantages(trajs, **opts), reference_a3(trajs, **opts)
        assert got.keys() == want.keys()
        worst = max(worst, max(abs(got[k] - want[k]) for k in want))
    assert worst < 1e-12


def test_matches_reference_on_synthetic_rollouts_and_a_large_group():
    trajs = synthetic_trajectories(4, n=8, max_steps=12, seed=3)
    for opts in ({}, {"trie_rows": "per_turn"}, {"clusters": "token_edit"}):
        got, want = advantages(trajs, **opts), reference_a3(trajs, **opts)
        assert max(abs(got[k] - want[k]) for k in want) < 1e-12, opts
    # 70 trajectories in one group: member bitsets span two 64-bit words
    rng = np.random.default_rng(11)
    big = [
        traj(
            f"t{i}",
            [VOCAB[int(rng.integers(3))] for _ in range(int(rng.integers(1, 4)))],
            float(rng.integers(2)),
        )
        for i in range(70)
    ]
    got, want = advantages(big, tree_tau=0.3), reference_a3(big, tree_tau=0.3)
    assert max(abs(got[k] - want[k]) for k in want) < 1e-12
