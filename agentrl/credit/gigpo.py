"""GiGPO (Feng et al. 2025, arXiv 2505.10978): group-in-group credit.

A step's advantage is an episode term (its trajectory's outcome normalised within the task
group, as GRPO) plus a step term: its discounted return normalised within its *anchor group*,
the rows of the same task group that acted on the same state, at any turn of any trajectory.
Repeated states are what make this critic-free step credit possible, so anchor groups can also
merge near-identical observations (``anchors="similarity"``).
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import math

import numpy as np

from agentrl.credit.base import Advantages, MissingInputError, register_estimator
from agentrl.credit.grpo import EPISODE_STATS, episode_advantage
from agentrl.credit.ops import (
    MODES,
    Layout,
    centred_group_stats,
    check_choice,
    check_finite,
    discounted_returns,
    factorize,
    layout,
)
from agentrl.types import StepBatch

ANCHORS = ("exact", "similarity")


def step_returns(batch: StepBatch, lay: Layout, gamma: float, invalid_penalty: float) -> np.ndarray:
    """R_{i,t} = sum_{k>=t} gamma^(k-t) r_k, minus c_inv on invalid rows after discounting
    (so the penalty never leaks to earlier steps)."""
    return discounted_returns(lay, batch.reward, gamma) - invalid_penalty * (~batch.valid)


def group_advantage(
    x: np.ndarray, g: np.ndarray, n_groups: int, *, mode: str, eps: float, ddof: int
) -> tuple[np.ndarray, np.ndarray]:
    """norm_{group}(x) per row, and whether the row's group has >= 2 members.

    Rows of singleton groups get 0. A constant group gives 0 even with eps = 0.
    """
    centred, std, count = centred_group_stats(x, g, n_groups, ddof)
    shared = count[g] >= 2
    if mode == "mean_std":
        scale = std[g] + eps
        adv = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)
    else:
        adv = centred
    return np.where(shared, adv, 0.0), shared


def char_counts(texts: list[str]) -> np.ndarray:
    """int[U, A]: how often each character (of the texts' joint alphabet) occurs in each text."""
    points = [np.frombuffer(t.encode("utf-32-le", "surrogatepass"), np.uint32) for t in texts]
    lengths = np.array([p.size for p in points], np.int64)
    if not lengths.sum():
        return np.zeros((len(texts), 1), np.int64)
    alphabet, char_id = np.unique(np.concatenate(points), return_inverse=True)
    owner = np.repeat(np.arange(len(texts)), lengths)
    flat = np.bincount(owner * alphabet.size + char_id, minlength=len(texts) * alphabet.size)
    return flat.reshape(len(texts), alphabet.size)


def similarity_anchor_groups(batch: StepBatch, threshold: float) -> tuple[np.ndarray, int]:
    """Anchor codes that also merge near-identical observations of the same task group.

    Exact duplicates are merged first (by state key); the distinct texts of each task group
    are then visited in (length, text) order, so the result does not depend on row order, and
    each joins the first cluster whose representative has difflib ratio >= ``threshold``
    (autojunk off: the true similarity, not its popularity-pruned variant). Only clusters
    whose representative's length can reach the threshold (2*min/(la+lb) >= t, difflib's
    real_quick_ratio) are considered, then those passing difflib's quick_ratio bound (shared
    character counts, computed for the whole window at once), and only those get ``ratio``.
    Rows without a state text stay in their own group.
    """
    if batch.state_text is None:
        raise MissingInputError("similarity anchors need StepBatch.state_text (the Step.state_key texts)")
    exact, n_exact = factorize(batch.group_idx, batch.column("state_key"))
    rep_row = np.zeros(n_exact, np.int64)
    rep_row[exact] = np.arange(len(batch))
    texts = batch.state_text[rep_row]
    groups = batch.group_idx[rep_row]
    cluster = np.arange(n_exact)
    visit = sorted(
        (int(groups[u]), len(texts[u]), texts[u], u) for u in range(n_exact) if texts[u] is not None
    )
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    for _, group_visit in itertools.groupby(visit, key=lambda v: v[0]):
        members = [(length, text, u) for _, length, text, u in group_visit]
        counts = char_counts([text for _, text, _ in members])
        rep_lengths: list[int] = []
        rep_slots: list[int] = []
        for slot, (length, text, u) in enumerate(members):
            # Representatives are created in increasing length, so those long enough form a suffix.
            lowest = bisect.bisect_left(rep_lengths, math.floor(threshold * length / (2.0 - threshold)) - 1)
            window = rep_slots[lowest:]
            shared_chars = np.minimum(counts[window], counts[slot]).sum(axis=1)
            total = np.asarray(rep_lengths[lowest:], np.float64) + length
            bound_ok = 2.0 * shared_chars / total >= threshold
            for k, j in enumerate(np.flatnonzero(bound_ok)):
                if k == 0:
                    matcher.set_seq2(text)
                matcher.set_seq1(members[window[j]][1])
                if matcher.ratio() >= threshold:
                    cluster[u] = members[window[j]][2]
                    break
            else:
                rep_lengths.append(length)
                rep_slots.append(slot)
    return cluster[exact], n_exact


def anchor_groups(batch: StepBatch, anchors: str, similarity_threshold: float) -> tuple[np.ndarray, int]:
    """Rows of one task group acting on the same (or, with similarity, a near-identical) state."""
    if anchors == "exact":
        return factorize(batch.group_idx, batch.column("state_key"))
    return similarity_anchor_groups(batch, similarity_threshold)


def step_advantage(
    batch: StepBatch,
    lay: Layout,
    *,
    gamma: float,
    invalid_penalty: float,
    mode: str,
    eps: float,
    anchors: str = "exact",
    similarity_threshold: float = 0.95,
    ddof: int = 1,
) -> np.ndarray:
    """GiGPO's step term A^S: the step return normalised within its anchor group (0 when alone).

    ``ddof`` 1 is GiGPO's unbiased std; 0 (population std) is HGPO's convention at level 1.
    """
    returns = step_returns(batch, lay, gamma, invalid_penalty)
    anchor, n_anchor = anchor_groups(batch, anchors, similarity_threshold)
    adv, _ = group_advantage(returns, anchor, n_anchor, mode=mode, eps=eps, ddof=ddof)
    return adv


@register_estimator(
    "gigpo",
    fields=("state_key",),
    paper="Feng et al. 2025 (GiGPO: Group-in-Group Policy Optimization for LLM Agent Training), arXiv 2505.10978",
)
def gigpo(
    batch: StepBatch,
    *,
    gamma: float = 0.95,
    omega: float = 1.0,
    mode: str = "mean_std",
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
    episode_stats: str = "trajectories",
    anchors: str = "exact",
    similarity_threshold: float = 0.95,
) -> Advantages:
    """Episode term norm_G(R_i - c_inv[invalid]) plus omega times the anchor-group step term.

    mode "mean_std" (ALFWorld) or "mean" (WebShop); unbiased std as the reference code.
    """
    check_choice("mode", mode, MODES)
    check_choice("episode_stats", episode_stats, EPISODE_STATS)
    check_choice("anchors", anchors, ANCHORS)
    check_finite("gamma", gamma, 0.0, 1.0)
    check_finite("omega", omega)
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    check_finite("similarity_threshold", similarity_threshold, 0.0, 1.0)
    if similarity_threshold == 0.0:
        raise ValueError("option similarity_threshold=0.0 must be > 0 (0 would merge every state)")
    lay = layout(batch)
    episode = episode_advantage(
        batch, lay, mode=mode, eps=eps, invalid_penalty=invalid_penalty, episode_stats=episode_stats
    )
    if omega == 0.0:
        return Advantages(step=episode)
    step = step_advantage(
        batch,
        lay,
        gamma=gamma,
        invalid_penalty=invalid_penalty,
        mode=mode,
        eps=eps,
        anchors=anchors,
        similarity_threshold=similarity_threshold,
    )
    return Advantages(step=episode + omega * step)
