"""A³ — Action Advantage Assignment (Su & Wen 2026, "Learning CLI Agents with Structured Action
Credit under Selective Observation", arXiv 2605.08013).

A turn's advantage = a robust episode backbone + a multi-scale leave-one-out residual of the
trajectories whose actions cluster together + a prefix-tree "decision gain" of the branch the
turn took, merged and bounded.

Source: the authors' code, Hoyant-Su/Agentic-RL-A3 at commit 8f2b7f27,
``main_entry/cli_agent_bash_coding/algo/A3_algo.py`` (``compute_A3_algo_advantage``) and
``algo/stable_ops.py`` (``group_median_mad``, ``smooth_bounded_score``); defaults from
``train/A3_algo/config.yaml`` ("v7"). Only the abstract of the paper was available to us; every
formula below follows the code unless marked [ours].

Per group g (the N trajectories of one task), with R_i the trajectory's outcome:

1. Backbone: ``b_i = tanh((R_i - med_g R) / s_g)``, ``s_g = max(1.4826 * MAD_g, 0.5) + eps``.
   Median and MAD over the group's trajectories (each once), both the *lower* median of an even
   count (``torch.Tensor.median``).
2. Multi-scale action residual, for each cell (group g, turn k) and scope s in ``scopes`` =
   (1, 2, 3, -1): the trajectories of g that reach turn k are clustered on their action snippet
   (the last s actions up to k, fewer near the start; -1 = all actions of the trajectory, future
   ones included) by single linkage cut at exactly ``ceil(m / min_count)`` clusters (m =
   trajectories in the cell; ``_adaptive_traj_bucket_k``/``_single_linkage_k_labels``: edges
   taken by ascending distance, ties in (i, j) order, until that many components remain -- so
   identical snippets can be split and different ones merged). Residual
   ``R_i - mean(R_j: j != i in i's cluster)`` (0 for a lone trajectory);
   ``trie_{i,k} = sum_s w_s * residual_s / (sum w + 1e-12)``.
   Then bounded like the backbone within the group: ``tanh((x - med)/s)`` (lower median, MAD).
   ``trie_rows="first"`` (default, the code): x is the trie term of the trajectory's first row in
   batch order, broadcast to all its rows (``_trie_residual_backbone_style``), so the term is
   trajectory-level; here the first row is turn 0 (estimators see rows by trajectory and turn).
   ``trie_rows="per_turn"`` [ours, the abstract's "turn-level" residuals]: each row keeps its own
   trie term, bounded with the median/MAD of the rows of its (group, turn) cell.
3. Tree decision gain: rows of one group at one turn share a *state bucket* when connected
   (union-find) by pairs whose time-weighted Hamming distance of past cluster vectors
   ``sum_{t<k} decay^t/(sum_{t<k} decay^t + 1e-9) * sum_s w'_s [lab_s(i,t) != lab_s(j,t)]`` is <=
   ``tree_tau`` (w' = scope weights normalised with +1e-9; at turn 0 all rows share one bucket);
   inside a state bucket, *action buckets* join rows whose current-turn vectors are within
   ``tree_tau`` the same way. A state bucket of >= 2 rows and >= 2 action buckets gives each of
   its rows ``gain = shrink * (mean R_branch - mean R_bucket)`` and ``support = shrink``,
   ``shrink = n_branch / (n_branch + support_prior + eps)``; other rows 0. Backward per
   trajectory: ``T_t = gain_t + decision_gamma * T_{t+1}`` (same for support S);
   ``tree_t = T_t * S_t / (S_t + support_prior + eps)``.
4. Merge: each of b, trie, tree divided by its mean |.| over the batch rows (+1e-9);
   ``A = adv_bound * tanh((b + w_trie * trie + w_tree * tree) / adv_bound)``, one value per turn
   (broadcast to its tokens).

Defaults ("v7" config): scopes (1, 2, 3, -1) with weights 0.25 each, min_count 2, w_trie 0.65,
w_tree 1.0 (v0: 0.5 / 1.5), adv_bound 1.1, support_prior 0.1, decision_gamma 0.9, tree_tau 0.05,
time_decay 0.84, eps 1e-6. Training: GSPO sequence-ratio loss (``compute_policy_loss_A3_algo``),
registered here as the default loss ``gspo`` (theirs also caps the mean log-ratio at 10 before
the exp, ours does not); the run used clip 0.1 (``actor_clip_ratio`` in ``train/A3_algo/config.yaml``,
commit 8f2b7f2), declared here as the default band (``clip``; a config's ``algorithm.clip_*`` wins),
group size 4, KL 0.01 (low_var_kl), grad-clip 0.5, lr 5e-7. Invalid actions are not penalised
(the A3 launch script sets ``use_invalid_action_penalty=False``): an invalid action's text
clusters like any other; truncated episodes are scored by their outcome alone.

Action clustering, the one place agentrl differs in kind: the authors parse bash commands and
cluster on a distance = token Levenshtein between AST "intent" signatures / max length, in [0, 1].
agentrl's actions are env text actions, so ``clusters`` offers
- ``"exact"`` (default): distance 0 between equal normalised actions (``StepBatch.action_key``;
  a snippet is the tuple of its actions' keys), 1 otherwise;
- ``"token_edit"``: word-level Levenshtein distance between the normalised action texts of the
  snippets (words of consecutive actions concatenated, as the code joins commands) / the longer
  length -- the authors' distance with words in place of AST intent tokens.
Both go through the same fixed-count single-linkage cut.

Deliberate differences from the released code: it lists a group's trajectories in Python
``set`` order (hash-seeded, so tie-breaking in the cut changes from process to process); we use
the batch's trajectory order. The released
pipeline computes the advantage on each data-parallel rank's share of the batch after verl's
length balancing (``fsdp_workers.update_actor``), where "first row in batch order" is whichever
row of the trajectory came first there; the rollout's own order (trajectory-major, by turn)
makes it turn 0, which is what ``trie_rows="first"`` uses. Float64 instead of float32.

Vectorised: rows sit on a member-major grid (member, turn, group), so pairwise work is a loop
over one member b of whole-grid operations; exact clusters come from a closed form of the
fixed-count cut over equality classes (no distance matrix), bucket connectivity from Warshall's
closure on bitsets. Loops run over members, scopes, turn positions and (``token_edit``)
edit-distance rows and cut edges, never over rows. ``token_edit`` costs about 40x the default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import Layout, backward_recursion, check_choice, check_finite, layout
from agentrl.types import StepBatch, normalize_action

CLUSTERS = ("exact", "token_edit")
TRIE_ROWS = ("first", "per_turn")
MAD_SCALE = 1.4826
MIN_SCALE = 0.5
MERGE_EPS = 1e-9  # the code's _RESIDUAL_EPS: mean-|.| normalisers, time weights, tree scope weights
TRIE_WEIGHT_EPS = 1e-12  # the code normalises the trie's scope weights with this one


# ----------------------------------------------------------------------------- robust bounding


def lower_median(x: np.ndarray, g: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group median taking the lower middle value of an even count (torch's ``median()``)."""
    order = np.lexsort((x, g))
    count = np.bincount(g, minlength=n_groups)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    med = np.zeros(n_groups)
    present = count > 0
    med[present] = x[order][start[present] + (count[present] - 1) // 2]
    return med


def robust_bounded(x: np.ndarray, g: np.ndarray, n_groups: int, eps: float) -> np.ndarray:
    """``tanh((x - med_g) / (max(1.4826 MAD_g, 0.5) + eps))`` with lower medians (``group_median_mad``)."""
    center = lower_median(x, g, n_groups)
    mad = lower_median(np.abs(x - center[g]), g, n_groups)
    scale = np.maximum(MAD_SCALE * mad, MIN_SCALE) + eps
    return np.tanh((x - center[g]) / scale[g])


# ----------------------------------------------------------------------------- the grid and bitsets


class Grid:
    """Rows laid out member-major as (member, turn position, task group): cell (t, g) holds the
    trajectories of group g that reach turn t, members numbered in trajectory order (a cell's
    members keep their relative order, the order single-linkage edges are taken in). Pairwise
    work loops over one member b and runs on whole [M, T, G] arrays, long contiguous rows."""

    def __init__(self, batch: StepBatch, lay: Layout):
        g_traj = lay.per_traj(batch.group_idx)
        order = np.argsort(g_traj, kind="stable")
        count = np.bincount(g_traj, minlength=batch.num_groups)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        member = np.empty(lay.n_traj, np.int64)
        member[order] = np.arange(lay.n_traj) - start[g_traj[order]]
        self.a, self.t, self.g = member[lay.slot], lay.pos, batch.group_idx
        self.shape = (max(int(count.max(initial=0)), 1), lay.max_len, batch.num_groups)
        self.present = np.zeros(self.shape, bool)
        self.present[self.a, self.t, self.g] = True
        self.size = self.present.sum(0)  # [T, G]
        self.words = (self.shape[0] + 63) // 64
        self.member = np.arange(self.shape[0])[:, None, None]

    @property
    def n_cells(self) -> int:
        return self.shape[1] * self.shape[2]

    def cell(self) -> np.ndarray:
        """Cell index (t * G + g) of every row."""
        return self.t * self.shape[2] + self.g

    def scatter(self, x: np.ndarray, fill: float | int = 0) -> np.ndarray:
        out = np.full(self.shape, fill, dtype=x.dtype)
        out[self.a, self.t, self.g] = x
        return out

    def gather(self, x_MTG: np.ndarray) -> np.ndarray:
        return x_MTG[self.a, self.t, self.g]

    def cluster_ids(self, rep_MTG: np.ndarray) -> np.ndarray:
        """Batch-unique cluster id per row from each row's cluster representative (a member)."""
        return self.cell() * self.shape[0] + self.gather(rep_MTG)

    def along_members(self, x_MTG: np.ndarray, member_MTG: np.ndarray) -> np.ndarray:
        """``x[member[a, t, g], t, g]``: a value of another member of the same cell."""
        cells = np.arange(self.n_cells).reshape(self.shape[1:])
        return x_MTG.reshape(-1)[
            (np.clip(member_MTG, 0, self.shape[0] - 1) * self.n_cells + cells).reshape(-1)
        ].reshape(self.shape)

    def pack(self, adj_of: Callable[[int], np.ndarray]) -> np.ndarray:
        """Bitsets [W, M, T, G] (uint64 words) whose bit b is ``adj_of(b)`` [M, T, G] & b present."""
        bits = np.zeros((self.words, *self.shape), np.uint64)
        for b in range(self.shape[0]):
            on = adj_of(b) & self.present[b]
            bits[b // 64] |= on.astype(np.uint64) << np.uint64(b % 64)
        return bits


_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_POWERS = np.uint64(1) << np.arange(64, dtype=np.uint64)
_DEBRUIJN_INDEX = np.zeros(64, np.int64)
_DEBRUIJN_INDEX[(_POWERS * _DEBRUIJN) >> np.uint64(58)] = np.arange(64)


def lowest_set(bits: np.ndarray) -> np.ndarray:
    """Index of the lowest set bit of bitsets [W, ...] (-1 for an empty set); de Bruijn per word."""
    out = np.full(bits.shape[1:], -1, np.int64)
    for w in range(bits.shape[0] - 1, -1, -1):
        x = bits[w]
        low = x & (~x + np.uint64(1))
        found = _DEBRUIJN_INDEX[(low * _DEBRUIJN) >> np.uint64(58)] + 64 * w
        out = np.where(x != 0, found, out)
    return out


def components(adj_bits: np.ndarray) -> np.ndarray:
    """Connected components of the graphs of every cell, given as neighbour bitsets [W, M, T, G]
    (Warshall's transitive closure); returns each present node's component as a bitset."""
    m = adj_bits.shape[1]
    reach = adj_bits.copy()
    for a in range(m):  # a node reaches itself
        reach[a // 64, a] |= np.uint64(1) << np.uint64(a % 64)
    for k in range(m):
        has_k = ((reach[k // 64] >> np.uint64(k % 64)) & np.uint64(1)).astype(bool)
        reach |= np.where(has_k, reach[:, k : k + 1], np.uint64(0))
    return reach


def n_clusters(size: np.ndarray, min_count: int) -> np.ndarray:
    """``_adaptive_traj_bucket_k``: ceil(m / min_count), within [1, m]."""
    return np.clip(-(-size // min_count), 1, np.maximum(size, 1))


# ----------------------------------------------------------------------------- exact snippets


def exact_reps(grid: Grid, action_key: np.ndarray, scopes: Sequence[int], min_count: int) -> list[np.ndarray]:
    """Per scope, [M, T, G] cluster representatives for snippets compared by equality (tuples of
    normalised-action keys): distance 0 when equal, 1 otherwise, cut as ``cut_exact``."""
    P = grid.present
    act = grid.scatter(action_key)
    length = P.sum(1)  # [M, G]
    widest = max([1, *scopes])
    S = len(scopes)
    first = np.full((S, *grid.shape), -1, np.int64)  # smallest equal member
    count = np.zeros((S, *grid.shape), np.int64)  # class size
    before = np.zeros((S, *grid.shape), np.int64)  # equal members before a
    for b in range(grid.shape[0]):
        same = act == act[b]
        e1 = same & P & P[b]
        windows = [e1]
        for d in range(1, widest):
            e = windows[-1].copy()
            e[:, d:] &= e1[:, :-d]  # turn t - d is in the window when t >= d (shorter before)
            windows.append(e)
        later = grid.member > b
        for si, s in enumerate(scopes):
            if s == -1:  # whole trajectories: equal wherever a has a turn, and as long
                whole = (same | ~P).all(axis=1) & (length == length[b])  # [M, G]
                e = whole[:, None, :] & P & P[b]
            else:
                e = windows[s - 1]
            np.copyto(first[si], b, where=e & (first[si] < 0))
            count[si] += e
            before[si] += e & later
    return [cut_exact(grid, first[si], count[si], before[si], min_count) for si in range(S)]


def cut_exact(
    grid: Grid, first: np.ndarray, count: np.ndarray, before: np.ndarray, min_count: int
) -> np.ndarray:
    """[M, T, G] cluster representative (a member) of the fixed-count single-linkage cut on a 0/1
    distance, from each member's equality class: its first member, size, and members before it.

    Kruskal on such a distance, edges in (i, j) order within a distance: the zero edges merge each
    equality class onto its first member, (first member, j) in that order; once only classes
    remain, the unit edges from the cell's first member merge whole classes in order of first
    appearance. So with u classes and k clusters to keep: u <= k -> the first m - k of those
    within-class merges happen; u > k -> the first u - k + 1 classes form one cluster.
    """
    P, idx = grid.present, grid.member
    is_first = P & (first == idx)
    m = grid.size
    keep = n_clusters(m, min_count)
    u = is_first.sum(0)
    lowest = np.argmax(P, axis=0)  # the cell's first member

    # within: a non-first row's place among the non-first rows ordered by (first member, row) =
    # the extra members of the classes opened before its class + its place inside its class
    extra = np.where(is_first, count - 1, 0)
    opened_before = np.cumsum(extra, axis=0) - extra
    place = grid.along_members(opened_before, first) + before - 1
    merged = P & ~is_first & (place < m - keep)
    rep_within = np.where(merged, first, idx)

    class_rank = grid.along_members(np.cumsum(is_first, axis=0) - 1, first)
    rep_across = np.where(class_rank <= u - keep, lowest, first)

    return np.where(keep >= m, idx, np.where(keep <= 1, lowest, np.where(u <= keep, rep_within, rep_across)))


# ----------------------------------------------------------------------------- token_edit snippets


def token_table(batch: StepBatch) -> tuple[np.ndarray, np.ndarray]:
    """Word ids of every row's normalised action, flattened in row order, and row offsets
    (each distinct action text is split once)."""
    texts, inverse = np.unique(batch.action.astype(str), return_inverse=True)
    vocab: dict[str, int] = {}
    words = [[vocab.setdefault(w, len(vocab)) for w in normalize_action(t).split()] for t in texts]
    u_len = np.array([len(w) for w in words], np.int64)
    u_off = np.concatenate([[0], np.cumsum(u_len)])
    u_flat = np.array([i for w in words for i in w], np.int64)
    row_len = u_len[inverse.reshape(-1)]
    offsets = np.concatenate([[0], np.cumsum(row_len)])
    index = np.repeat(u_off[:-1][inverse.reshape(-1)] - offsets[:-1], row_len) + np.arange(offsets[-1])
    return u_flat[index], offsets


def edit_distance(tokens: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Levenshtein distance / max(len, 1) between token slices ``a`` and ``b`` (rows of
    (start, end) into ``tokens``), all pairs at once. The DP runs over a's tokens; within a DP row
    ``cur[j] = j + cummin_{j' <= j}(x[j'] - j')`` resolves the left-neighbour term. Pairs are
    sorted by a's length so each DP row only touches the pairs still running."""
    la, lb = a[:, 1] - a[:, 0], b[:, 1] - b[:, 0]
    out = np.zeros(la.size)
    if la.size == 0:
        return out
    order = np.argsort(-la, kind="stable")
    a, la, lb = a[order], la[order], lb[order]
    max_a, max_b = int(la[0]), int(lb.max())
    last = max(tokens.size - 1, 0)
    cols = np.arange(max_b)
    b_tok = np.where(cols < lb[:, None], tokens[np.minimum(b[order, :1] + cols, last)], -1).astype(np.int32)
    j = np.arange(max_b + 1, dtype=np.int32)
    prev = np.broadcast_to(j, (la.size, max_b + 1)).copy()
    n_live = np.searchsorted(-la, -np.arange(max_a + 1), side="right")  # pairs with la >= i
    for i in range(1, max_a + 1):
        n = int(n_live[i])
        a_tok = tokens[np.minimum(a[:n, 0] + i - 1, last)].astype(np.int32)
        p = prev[:n]
        x = np.empty_like(p)
        x[:, 0] = i
        np.minimum(p[:, 1:] + 1, p[:, :-1] + (b_tok[:n] != a_tok[:, None]), out=x[:, 1:])
        prev[:n] = j + np.minimum.accumulate(x - j, axis=1)
    out[order] = prev[np.arange(la.size), lb] / np.maximum(np.maximum(la, lb), 1)
    return out


def snippet_slices(lay: Layout, offsets: np.ndarray, scope: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) token offsets of each row's snippet at ``scope`` (words of consecutive
    actions), and an id equal for rows whose snippets are the same slice."""
    first_row = lay.first[lay.slot]
    rows = np.arange(lay.slot.size)
    if scope == -1:
        lo, hi, same = first_row, (lay.first + lay.lengths)[lay.slot], first_row
    else:
        lo, hi, same = np.maximum(first_row, rows - (scope - 1)), rows + 1, rows
    return np.stack([offsets[lo], offsets[hi]], axis=1), same


def cut_token_edit(
    grid: Grid, snippets: tuple[np.ndarray, np.ndarray], tokens: np.ndarray, min_count: int
) -> np.ndarray:
    """[M, T, G] cluster representative of the fixed-count single-linkage cut on the normalised
    word edit distance: Kruskal in every cell at once, edges sorted stably so ties keep (i, j)
    order; a cluster's representative is its first member."""
    M = grid.shape[0]
    present = grid.present.reshape(M, grid.n_cells).T  # [C, M]
    rows = grid.scatter(np.arange(grid.g.size), fill=-1).reshape(M, grid.n_cells).T
    ei, ej = np.triu_indices(M, k=1)
    valid = present[:, ei] & present[:, ej]  # [C, E]
    c_idx, e_idx = np.nonzero(valid)
    slices, same = snippets
    row_a, row_b = rows[c_idx, ei[e_idx]], rows[c_idx, ej[e_idx]]
    dist = np.full(valid.shape, np.inf)
    if row_a.size:  # each distinct pair of snippets once (whole trajectories recur at every turn)
        _, pick_pair, inverse = np.unique(
            same[row_a] * (same.max() + 1) + same[row_b], return_index=True, return_inverse=True
        )
        d = edit_distance(tokens, slices[row_a[pick_pair]], slices[row_b[pick_pair]])
        dist[c_idx, e_idx] = d[inverse.reshape(-1)]
    order = np.argsort(dist, axis=1, kind="stable")
    label = np.broadcast_to(np.arange(M), present.shape).copy()
    comps = grid.size.reshape(-1).copy()
    keep = n_clusters(comps, min_count)
    cells = np.arange(grid.n_cells)
    for step in range(ei.size):
        e = order[:, step]
        la, lb = label[cells, ei[e]], label[cells, ej[e]]
        join = valid[cells, e] & (la != lb) & (comps > keep)
        if join.any():
            label = np.where(join[:, None] & (label == lb[:, None]), la[:, None], label)
            comps -= join
    # a component's representative: its smallest member (labels are members of their component)
    lowest = np.full(present.shape, M, np.int64)
    np.minimum.at(lowest, (np.repeat(cells, M), label.reshape(-1)), np.tile(np.arange(M), grid.n_cells))
    return np.take_along_axis(lowest, label, axis=1).T.reshape(grid.shape)


# ----------------------------------------------------------------------------- the three terms


def trie_residual(grid: Grid, reps: list[np.ndarray], outcome: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_s w_s (R - leave-one-out mean of R in the row's scope-s cluster)``, w normalised."""
    w = weights / (weights.sum() + TRIE_WEIGHT_EPS)
    n_ids = grid.n_cells * grid.shape[0]
    out = np.zeros(outcome.size)
    for w_s, rep in zip(w, reps):
        cid = grid.cluster_ids(rep)
        total = np.bincount(cid, weights=outcome, minlength=n_ids)[cid]
        count = np.bincount(cid, minlength=n_ids)[cid]
        loo = np.divide(total - outcome, count - 1, out=outcome.copy(), where=count > 1)
        out += w_s * (outcome - loo)
    return out


def tree_component(
    grid: Grid,
    lay: Layout,
    outcome: np.ndarray,
    reps: list[np.ndarray],
    weights: np.ndarray,
    *,
    tree_tau: float,
    time_decay: float,
    support_prior: float,
    decision_gamma: float,
    eps: float,
) -> np.ndarray:
    """``T * S / (S + support_prior + eps)`` per row, T and S the discounted backward sums of the
    decision gain and its support (step 3 of the module doc)."""
    M, T = grid.shape[0], grid.shape[1]
    w = weights / (weights.sum() + MERGE_EPS)
    ham = np.zeros((M, *grid.shape))  # [b, a, t, g]: sum_s w_s [rep_s(a) != rep_s(b)], scope order
    for b in range(M):
        for w_s, rep in zip(w, reps):
            ham[b] += w_s * (rep != rep[b])
    # state adjacency at turn k: sum_{t<k} decay^t ham_t / (sum_{t<k} decay^t + 1e-9) <= tau
    state_adj = np.empty(ham.shape, bool)
    past = np.zeros((M, M, grid.shape[2]))
    norm = 0.0
    for k in range(T):
        np.less_equal(past / (norm + MERGE_EPS), tree_tau, out=state_adj[:, :, k])
        past += time_decay**k * ham[:, :, k]
        norm += time_decay**k
    state = components(grid.pack(lambda b: state_adj[b]))
    # action buckets: the same test on the current turn, inside the state bucket (its bitset)
    action = components(grid.pack(lambda b: ham[b] <= tree_tau) & state)

    n_ids = grid.n_cells * M
    s_id, b_id = grid.cluster_ids(lowest_set(state)), grid.cluster_ids(lowest_set(action))
    s_count = np.bincount(s_id, minlength=n_ids)
    s_mean = np.bincount(s_id, weights=outcome, minlength=n_ids) / np.maximum(s_count, 1)
    b_count = np.bincount(b_id, minlength=n_ids)
    b_mean = np.bincount(b_id, weights=outcome, minlength=n_ids) / np.maximum(b_count, 1)
    heads = np.zeros(n_ids, bool)
    heads[b_id] = True  # one head per branch: branches of a state bucket = distinct b_id in it
    b_state = np.zeros(n_ids, np.int64)
    b_state[b_id] = s_id
    branches = np.bincount(b_state[heads], minlength=n_ids)
    on = ((s_count >= 2) & (branches >= 2))[s_id]
    shrink = b_count[b_id] / (b_count[b_id] + support_prior + eps)
    gain = np.where(on, shrink * (b_mean[b_id] - s_mean[s_id]), 0.0)
    support = np.where(on, shrink, 0.0)
    coef = np.full(outcome.size, decision_gamma)
    ret = backward_recursion(lay, gain, coef)
    sup = backward_recursion(lay, support, coef)
    return ret * (sup / (sup + support_prior + eps))


# ----------------------------------------------------------------------------- estimator


def _check_scopes(scopes: Sequence[int], scope_weights: Sequence[float]) -> np.ndarray:
    scopes = tuple(scopes)
    if not scopes or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in scopes):
        raise ValueError(f"option scopes={scopes!r} must be a non-empty sequence of integers")
    if any(s != -1 and s < 1 for s in scopes):
        raise ValueError(f"option scopes={scopes!r}: each scope is -1 (whole trajectory) or >= 1 actions")
    if len(tuple(scope_weights)) != len(scopes):
        raise ValueError(
            f"option scope_weights needs one weight per scope ({len(scopes)}), got {scope_weights!r}"
        )
    for w in scope_weights:
        check_finite("scope_weights", w, 0.0)
    weights = np.asarray(tuple(scope_weights), dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError(f"option scope_weights={scope_weights!r} must not all be 0")
    return weights


@register_estimator(
    "a3",
    paper="Su & Wen 2026 (A3, Learning CLI Agents with Structured Action Credit), arXiv 2605.08013",
    loss="gspo",
    clip=(0.1, 0.1),
)
def a3(
    batch: StepBatch,
    *,
    clusters: str = "exact",
    trie_rows: str = "first",
    scopes: Sequence[int] = (1, 2, 3, -1),
    scope_weights: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
    min_count: int = 2,
    w_trie: float = 0.65,
    w_tree: float = 1.0,
    adv_bound: float = 1.1,
    support_prior: float = 0.1,
    decision_gamma: float = 0.9,
    tree_tau: float = 0.05,
    time_decay: float = 0.84,
    eps: float = 1e-6,
) -> Advantages:
    """Robust episode backbone + multi-scale action-cluster residual + prefix-tree decision gain,
    merged as ``adv_bound * tanh((b + w_trie*trie + w_tree*tree) / adv_bound)`` (module doc).

    ``clusters``: "exact" (equal normalised actions) or "token_edit" (normalised word edit
    distance). ``trie_rows``: "first" (the code: each trajectory's turn-0 trie term on all its
    rows) or "per_turn" (each row's own, bounded within its (group, turn) cell).
    """
    check_choice("clusters", clusters, CLUSTERS)
    check_choice("trie_rows", trie_rows, TRIE_ROWS)
    weights = _check_scopes(scopes, scope_weights)
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ValueError(f"option min_count={min_count!r} must be an integer >= 1")
    for name, value in (("w_trie", w_trie), ("w_tree", w_tree)):
        check_finite(name, value)
    check_finite("adv_bound", adv_bound, 0.0)
    if adv_bound == 0:
        raise ValueError("option adv_bound=0 must be > 0")
    check_finite("support_prior", support_prior, 0.0)
    check_finite("decision_gamma", decision_gamma, 0.0, 1.0)
    check_finite("tree_tau", tree_tau, 0.0)
    check_finite("time_decay", time_decay, 0.0, 1.0)
    if time_decay == 0:
        raise ValueError("option time_decay=0 must be > 0")
    check_finite("eps", eps, 0.0)

    lay = layout(batch)
    grid = Grid(batch, lay)
    outcome = batch.outcome
    n_groups = batch.num_groups
    g_traj = lay.per_traj(batch.group_idx)

    backbone = robust_bounded(lay.per_traj(outcome), g_traj, n_groups, eps)[lay.slot]

    if clusters == "exact":
        reps = exact_reps(grid, batch.action_key, tuple(scopes), int(min_count))
    else:
        tokens, offsets = token_table(batch)
        reps = [
            cut_token_edit(grid, snippet_slices(lay, offsets, int(s)), tokens, int(min_count)) for s in scopes
        ]

    trie_raw = trie_residual(grid, reps, outcome, weights)
    if trie_rows == "first":
        trie = robust_bounded(lay.per_traj(trie_raw), g_traj, n_groups, eps)[lay.slot]
    else:
        trie = robust_bounded(trie_raw, grid.cell(), grid.n_cells, eps)

    tree = tree_component(
        grid,
        lay,
        outcome,
        reps,
        weights,
        tree_tau=tree_tau,
        time_decay=time_decay,
        support_prior=support_prior,
        decision_gamma=decision_gamma,
        eps=eps,
    )

    def unit(x: np.ndarray) -> np.ndarray:
        return x / (np.abs(x).mean() + MERGE_EPS)

    pre = unit(backbone) + w_trie * unit(trie) + w_tree * unit(tree)
    return Advantages(step=adv_bound * np.tanh(pre / adv_bound))
