"""MatchTIR's turn rewards: predicted tool calls scored by a bipartite match against gold calls.

Qu et al., MatchTIR (arXiv 2601.10712). The official repository (quchangle1/MatchTIR) in our code
store holds only its README and evaluation; the rules below follow the public re-implementation
that names the official reward functions, ``prog_env/reward_score/matchtir.py``
(``tool_similarity``, ``match_score``, ``hungarian_assignment``, ``assign_rewards_hungarian``,
``assign_rewards_ot``, ``compute_process_KM``, ``compute_process_ot``) [code]:

- ``call_similarity``: 0 when the names differ (compared lower-cased), else
  ``(1 + jaccard(param names) + #{gold params the prediction gives exactly}) / (2 + |gold params|)``;
  the Jaccard is over multisets, 1 when both name lists are equal (two empty ones too), 0 when one
  is empty.
- hard matching (``compute_process_KM``): a one-to-one assignment by **greedy** descent over the
  similarity matrix (the code names it "hungarian" but sorts all pairs by similarity and takes
  each pair whose call and gold call are both still free; ties keep (pred, gold) order; only pairs
  with similarity > 0 match). A matched call earns its similarity, an unmatched one
  ``unmatched_penalty`` (0 in ``compute_process_KM``; the function's own default is -0.5).
  ``matching="hungarian"`` solves the assignment exactly (maximum total similarity, scipy's
  ``linear_sum_assignment``) [ours: an option; pairs of similarity 0 stay unmatched as in greedy].
- soft matching (``compute_process_ot``): an entropic optimal-transport plan T between uniform
  marginals (1/P per call, 1/G per gold call) with cost -S and regularisation 0.1, by Sinkhorn's
  iterations as POT's ``ot.sinkhorn`` runs them (at most 1000, stop when the column marginals are
  within 1e-9); call i earns ``sum_j T_ij S_ij``. Rows of T sum to 1/P, so a perfect turn of P
  calls earns 1/P per call in the code; ``soft_normalise=True`` divides by the row mass instead
  (a perfect call then earns about 1) [ours, an option].
- a turn's reward is the mean of its calls' rewards; a final-answer turn earns the token-set F1 of
  its answer against the gold answer (``token_f1``: lower-case, punctuation to spaces, sets of
  words); a turn with neither earns 0.

``MatchReward`` bundles these options; the BFCL env (``BFCLMultiTurnEnv(turn_rewards="matchtir")``)
and other tool envs call ``MatchReward.call_rewards`` on the calls of a turn.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MATCHINGS",
    "Call",
    "MatchReward",
    "call_similarity",
    "greedy_assignment",
    "hungarian_assignment",
    "json_value",
    "multiset_jaccard",
    "similarity_matrix",
    "sinkhorn_plan",
    "token_f1",
]

MATCHINGS = ("greedy", "hungarian", "sinkhorn")
Call = tuple[str, Mapping[str, Any]]  # (function name, keyword arguments)


def multiset_jaccard(a: Sequence[Any], b: Sequence[Any]) -> float:
    """|a ∩ b| / |a ∪ b| over multisets; 1 when the lists are equal (both empty too), 0 when one is empty."""
    if list(a) == list(b):
        return 1.0
    if not a or not b:
        return 0.0
    inter = sum((Counter(a) & Counter(b)).values())
    return inter / (len(a) + len(b) - inter)


def call_similarity(pred: Call, gold: Call) -> float:
    """S(pred, gold) in [0, 1]: 0 for another function, else (1 + Jaccard of names + equal values)/(2 + |gold|)."""
    (p_name, p_args), (g_name, g_args) = pred, gold
    if str(p_name).lower() != str(g_name).lower():
        return 0.0
    p_args = p_args if isinstance(p_args, Mapping) else {}
    equal = sum(1 for k, v in g_args.items() if k in p_args and p_args[k] == v)
    return (1.0 + multiset_jaccard(list(g_args), list(p_args)) + equal) / (2.0 + len(g_args))


def similarity_matrix(preds: Sequence[Call], golds: Sequence[Call]) -> np.ndarray:
    """S[i, j] = call_similarity(preds[i], golds[j]), shape (P, G)."""
    out = np.zeros((len(preds), len(golds)))
    for i, p in enumerate(preds):
        for j, g in enumerate(golds):
            out[i, j] = call_similarity(p, g)
    return out


def greedy_assignment(S: np.ndarray) -> np.ndarray:
    """The code's "hungarian_assignment": gold index per prediction (-1: unmatched), pairs taken by
    descending similarity (ties in (pred, gold) order), only pairs with S > 0."""
    P, G = S.shape
    out = np.full(P, -1, dtype=np.int64)
    taken = np.zeros(G, dtype=bool)
    flat = S.ravel()
    for k in np.argsort(-flat, kind="stable"):
        if flat[k] <= 0:
            break
        i, j = divmod(int(k), G)
        if out[i] < 0 and not taken[j]:
            out[i], taken[j] = j, True
    return out


def hungarian_assignment(S: np.ndarray) -> np.ndarray:
    """Gold index per prediction (-1: unmatched) of a maximum-total-similarity assignment;
    needs scipy. Pairs of similarity 0 are left unmatched, as in the greedy rule."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:  # pragma: no cover - scipy is in the lock
        raise ImportError("matching='hungarian' needs scipy (pip install scipy)") from e
    out = np.full(S.shape[0], -1, dtype=np.int64)
    if S.size:
        rows, cols = linear_sum_assignment(S, maximize=True)
        keep = S[rows, cols] > 0
        out[rows[keep]] = cols[keep]
    return out


def sinkhorn_plan(S: np.ndarray, reg: float = 0.1, max_iter: int = 1000, tol: float = 1e-9) -> np.ndarray:
    """Entropic OT plan between uniform marginals for cost -S (Sinkhorn-Knopp as in POT's ``ot.sinkhorn``)."""
    P, G = S.shape
    if P == 0 or G == 0:
        return np.zeros((P, G))
    a, b = np.full(P, 1.0 / P), np.full(G, 1.0 / G)
    K = np.exp(S / reg)
    u, v = np.full(P, 1.0 / P), np.full(G, 1.0 / G)
    for it in range(max_iter):
        prev = u, v
        kt_u = K.T @ u
        v = b / kt_u
        u = 1.0 / ((K / a[:, None]) @ v)
        if (kt_u == 0).any() or not (np.isfinite(u).all() and np.isfinite(v).all()):
            u, v = prev
            break
        if it % 10 == 0 and np.linalg.norm(v * (K.T @ u) - b) < tol:
            break
    return u[:, None] * K * v[None, :]


_PUNCT = str.maketrans(dict.fromkeys(string.punctuation, " "))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the word sets of two texts after lower-casing and turning punctuation into spaces."""
    pred, ref = set(prediction.lower().translate(_PUNCT).split()), set(gold.lower().translate(_PUNCT).split())
    common = len(pred & ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def json_value(value: Any) -> Any:
    """A gold argument as a JSON call would carry it (tuples become lists), so equal values compare equal."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


@dataclass(frozen=True)
class MatchReward:
    """MatchTIR's call rewards with their options (see the module docstring)."""

    matching: str = "greedy"
    unmatched_penalty: float = 0.0
    reg: float = 0.1
    soft_normalise: bool = False

    def __post_init__(self) -> None:
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching={self.matching!r} is not allowed; choose one of {MATCHINGS}")
        if not np.isfinite(self.unmatched_penalty):
            raise ValueError(f"unmatched_penalty must be finite, got {self.unmatched_penalty}")
        if not (np.isfinite(self.reg) and self.reg > 0):
            raise ValueError(f"reg must be a finite number > 0, got {self.reg}")

    def call_rewards(self, preds: Sequence[Call], golds: Sequence[Call]) -> np.ndarray:
        """One reward per predicted call against the gold calls."""
        S = similarity_matrix(preds, golds)
        if self.matching == "sinkhorn":
            T = sinkhorn_plan(S, reg=self.reg)
            reward = (T * S).sum(axis=1)
            if self.soft_normalise:
                mass = T.sum(axis=1)
                reward = np.divide(reward, mass, out=np.zeros_like(reward), where=mass > 0)
            return reward
        match = greedy_assignment(S) if self.matching == "greedy" else hungarian_assignment(S)
        got = S[np.arange(len(preds)), np.maximum(match, 0)] if S.size else np.zeros(len(preds))
        return np.where(match >= 0, got, self.unmatched_penalty)

    def turn_reward(self, preds: Sequence[Call], golds: Sequence[Call]) -> float:
        """Mean reward of a turn's calls (0 for a turn without calls)."""
        r = self.call_rewards(preds, golds)
        return float(r.mean()) if r.size else 0.0
