"""Frozen copy of agentrl/credit/ktae.py as it was before its dense-counting rewrite (one argsort over
the batch's (group, token, trajectory) codes): the vectorised estimator must give the same outputs.
``reference_ktae`` takes a canonical batch (``batch.take(batch.canonical_order())``); not registered.
Fisher's test, the information gain and the source's constants are the module's own (the rewrite
changed how tables are counted, not these; they are checked against scipy and a per-group loop)."""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages
from agentrl.credit.grpo import episode_advantage
from agentrl.credit.ktae import (  # the per-table statistics, unchanged by the rewrite (tested against scipy)
    COHEN_EPS,
    K1,
    TF_EPS,
    B,
    fisher_two_sided,
    information_gain,
)
from agentrl.credit.ops import check_choice, check_finite, layout
from agentrl.types import StepBatch

PACK_LIMIT = 2**62  # (group, token, trajectory) packed in one int64 below this, else a lexsort


def key_scores(
    a: np.ndarray,
    b: np.ndarray,
    n_correct: np.ndarray,
    n_wrong: np.ndarray,
    freq_correct: np.ndarray,
    freq_wrong: np.ndarray,
    len_correct: np.ndarray,
    len_wrong: np.ndarray,
    *,
    alpha: float,
    beta: float,
    tf: bool,
    scale: float,
) -> np.ndarray:
    """key(v) of each table (module doc): ``a``/``b`` correct/incorrect rollouts containing v out of
    ``n_correct``/``n_wrong``; ``freq_*`` occurrences of v and ``len_*`` token counts of each side."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c, d = n_correct - a, n_wrong - b
    fisher = np.zeros_like(a)
    if alpha:
        # Fisher's test once per distinct table (packed into one integer: counts <= group size)
        radix = int(max(a.max(initial=0), b.max(initial=0), c.max(initial=0), d.max(initial=0))) + 1
        ia, ib, ic, id_ = (np.rint(v).astype(np.int64) for v in (a, b, c, d))
        uniq, inv = np.unique(((ia * radix + ib) * radix + ic) * radix + id_, return_inverse=True)
        ud = uniq % radix
        uc = (uniq // radix) % radix
        ub = (uniq // radix**2) % radix
        ua = uniq // radix**3
        p, whole = fisher_two_sided(ua, ub, uc, ud)
        fisher = np.where(whole, 0.0, np.exp(-2.0 * p))[inv.reshape(-1)]
    ig = information_gain(a, b, c, d) if beta else np.zeros_like(a)
    pa = np.clip(a / (a + c + COHEN_EPS), 0.0, 1.0)
    pb = np.clip(b / (b + d + COHEN_EPS), 0.0, 1.0)
    x = np.arcsin(np.sqrt(pa)) - np.arcsin(np.sqrt(pb))
    if tf:
        avg = (len_correct + len_wrong) / 2.0
        sides = []
        for freq, length in ((freq_correct, len_correct), (freq_wrong, len_wrong)):
            f = np.divide(freq, length, out=np.zeros_like(a), where=length > 0)
            k = K1 * (1.0 - B + B * np.divide(length, avg, out=np.zeros_like(a), where=avg > 0))
            sides.append(np.divide(f * (K1 + 1.0), f + k, out=np.zeros_like(a), where=(f + k) > 0))
        tf_c, tf_w = sides
        x = x + tf_c / (tf_w + TF_EPS) - tf_w / (tf_c + TF_EPS)
    z = (alpha * fisher + beta * ig) * x / (alpha + beta)
    key = scale * np.tanh(z / 2.0)  # = scale * (2 sigmoid(z) - 1), the source's squash
    return np.where((n_correct > 0) & (n_wrong > 0), key, 0.0)


def reference_ktae(
    batch: StepBatch,
    *,
    scale: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    tf: bool = True,
    correct: str = "outcome",
    ignore_token_ids: tuple[int, ...] | list[int] = (),
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
) -> Advantages:
    """Per-token A_i + key(token): GRPO plus the token's association with success in its group."""
    check_finite("scale", scale)
    check_finite("alpha", alpha, 0.0)
    check_finite("beta", beta, 0.0)
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    check_choice("correct", correct, ("outcome", "success"))
    if alpha + beta <= 0:
        raise ValueError(
            "options alpha and beta weigh Fisher's test and the information gain; one must be > 0"
        )
    if not isinstance(tf, bool):
        raise ValueError(f"option tf={tf!r} must be true or false")
    ignore = np.asarray(list(ignore_token_ids), dtype=np.int64)

    lay = layout(batch)
    base = episode_advantage(
        batch, lay, mode="mean_std", eps=eps, invalid_penalty=invalid_penalty, episode_stats="trajectories"
    )
    ids = batch.column("response_ids")
    n = len(batch)
    lengths = np.fromiter((len(t) for t in ids), np.int64, n)
    total = int(lengths.sum())
    if total == 0:
        return Advantages(step=base, token=[np.zeros(0) for _ in range(n)])
    tok = np.concatenate([t for t in ids if len(t)]).astype(np.int64)
    if tok.min() < 0:
        raise ValueError("response_ids must be non-negative token ids")
    row = np.repeat(np.arange(n), lengths)
    slot = lay.slot[row]  # trajectory slot of each token
    n_traj = lay.n_traj
    traj_group = batch.group_idx[lay.first]
    ok = (batch.outcome > 0) if correct == "outcome" else batch.success
    traj_ok = ok[lay.first].astype(np.float64)
    vocab = int(tok.max()) + 1
    g = batch.num_groups

    # One sort by (group, token, trajectory): runs of equal (group, token) are the tables, runs of
    # equal (group, token, trajectory) the distinct trajectories containing the token.
    if g * vocab * n_traj < PACK_LIMIT:
        code = (traj_group[slot] * vocab + tok) * n_traj + slot
        order = np.argsort(code)
        sorted_code = code[order]
        new_pair = np.empty(total, dtype=bool)
        new_pair[0] = True
        np.not_equal(sorted_code[1:], sorted_code[:-1], out=new_pair[1:])
        table_code = sorted_code // n_traj
    else:  # ids too large to pack in one integer
        order = np.lexsort((slot, tok, traj_group[slot]))
        keys = (traj_group[slot][order], tok[order], slot[order])
        new_pair = np.ones(total, dtype=bool)
        new_pair[1:] = (
            (keys[0][1:] != keys[0][:-1]) | (keys[1][1:] != keys[1][:-1]) | (keys[2][1:] != keys[2][:-1])
        )
        table_code = np.cumsum(np.r_[True, (keys[0][1:] != keys[0][:-1]) | (keys[1][1:] != keys[1][:-1])])
    new_table = np.empty(total, dtype=bool)
    new_table[0] = True
    np.not_equal(table_code[1:], table_code[:-1], out=new_table[1:])
    table_of_sorted = np.cumsum(new_table) - 1
    pair_start = np.flatnonzero(new_pair)
    pair_count = np.diff(np.r_[pair_start, total]).astype(np.float64)
    p_traj = slot[order[pair_start]]
    p_table = table_of_sorted[pair_start]
    table_start = np.flatnonzero(new_table)
    table_group = traj_group[slot[order[table_start]]]
    table_tok = tok[order[table_start]]
    p_ok = traj_ok[p_traj]
    k = table_start.shape[0]
    a = np.bincount(p_table, weights=p_ok, minlength=k)
    b = np.bincount(p_table, weights=1.0 - p_ok, minlength=k)
    freq_c = np.bincount(p_table, weights=pair_count * p_ok, minlength=k)
    freq_w = np.bincount(p_table, weights=pair_count * (1.0 - p_ok), minlength=k)
    g = batch.num_groups
    n_c = np.bincount(traj_group, weights=traj_ok, minlength=g)
    n_w = np.bincount(traj_group, weights=1.0 - traj_ok, minlength=g)
    traj_len = np.bincount(slot, minlength=n_traj).astype(np.float64)
    len_c = np.bincount(traj_group, weights=traj_len * traj_ok, minlength=g)
    len_w = np.bincount(traj_group, weights=traj_len * (1.0 - traj_ok), minlength=g)
    key = key_scores(
        a,
        b,
        n_c[table_group],
        n_w[table_group],
        freq_c,
        freq_w,
        len_c[table_group],
        len_w[table_group],
        alpha=alpha,
        beta=beta,
        tf=tf,
        scale=scale,
    )
    if ignore.size:
        key[np.isin(table_tok, ignore)] = 0.0
    flat = base[row]
    flat[order] += key[table_of_sorted]
    ends = np.cumsum(lengths).tolist()
    return Advantages(step=base, token=[flat[e - m : e] for e, m in zip(ends, lengths.tolist())])
