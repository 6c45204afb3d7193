"""Vectorised building blocks shared by the estimators: factorising keys, group statistics,
per-trajectory layout and backward recursions over turns.

Every function works on whole arrays; the only Python loops are over turn positions (at most
the episode length) or over anchor levels, never over rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agentrl.types import StepBatch

MODES = ("mean_std", "mean")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"option {name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
        )


def factorize(*keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense codes 0..K-1 for rows with equal key tuples (exact, no hashing), and K."""
    n = keys[0].shape[0]
    if n == 0:
        return np.zeros(0, np.int64), 0
    order = np.lexsort(keys[::-1])
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        ks = k[order]
        change[1:] |= ks[1:] != ks[:-1]
    codes_sorted = np.cumsum(change) - 1
    codes = np.empty(n, dtype=np.int64)
    codes[order] = codes_sorted
    return codes, int(codes_sorted[-1]) + 1


def check_finite(name: str, value: float, low: float = -math.inf, high: float = math.inf) -> None:
    """Reject a numeric option that is not a finite number in [low, high], naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"option {name}={value!r} must be a finite number")
    if not low <= value <= high:
        raise ValueError(f"option {name}={value!r} must lie in [{low}, {high}]")


def centred_group_stats(
    x: np.ndarray, g: np.ndarray, n_groups: int, ddof: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: x minus its group mean; per group: std (``ddof`` 1 = unbiased, 0 = population) and count.

    Values are centred on one member of their group before averaging, so a group whose members
    are all equal gives exactly 0 (not 1e-17 rounding residue): HGPO drops levels whose advantage
    is exactly 0, and a constant group must carry no signal. Groups with fewer than ddof+1
    members get std 0, so a singleton normalises to 0, not NaN.
    """
    pivot = np.zeros(n_groups)
    pivot[g] = x
    d = x - pivot[g]
    count = np.bincount(g, minlength=n_groups).astype(np.float64)
    mean_d = np.divide(
        np.bincount(g, weights=d, minlength=n_groups), count, out=np.zeros(n_groups), where=count > 0
    )
    centred = d - mean_d[g]
    denom = count - ddof
    sq = np.bincount(g, weights=centred * centred, minlength=n_groups)
    std = np.sqrt(np.divide(sq, denom, out=np.zeros(n_groups), where=denom > 0))
    return centred, std, count


def group_mean_std(
    x: np.ndarray, g: np.ndarray, n_groups: int, ddof: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group mean, std and count (see ``centred_group_stats``); exact for constant groups."""
    centred, std, count = centred_group_stats(x, g, n_groups, ddof)
    mean = np.zeros(n_groups)
    mean[g] = x - centred
    return mean, std, count


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, mode: str, eps: float) -> np.ndarray:
    """(x - mean) / (std + eps) for "mean_std", x - mean for "mean"."""
    if mode == "mean_std":
        return (x - mean) / (std + eps)
    return x - mean


def group_median(x: np.ndarray, g: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group median (mean of the two middle values for even counts); 0 for empty groups."""
    order = np.lexsort((x, g))
    xs, gs = x[order], g[order]
    count = np.bincount(gs, minlength=n_groups)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    present = count > 0
    lo = start + (count - 1) // 2
    hi = start + count // 2
    med = np.zeros(n_groups)
    med[present] = 0.5 * (xs[lo[present]] + xs[hi[present]])
    return med


def whiten(x: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """Standardise over the entries selected by ``mask`` (all by default); others become 0."""
    sel = np.ones(x.shape[0], bool) if mask is None else mask
    out = np.zeros_like(x, dtype=np.float64)
    if not sel.any():
        return out
    v = x[sel]
    std = v.std()
    out[sel] = (v - v.mean()) / (std + eps) if std > eps else v - v.mean()
    return out


@dataclass(frozen=True)
class Layout:
    """Where each row of a canonical batch sits: trajectory slot and position within it.

    ``first`` holds the row index of each trajectory's first row (one per trajectory present),
    ``slot`` the trajectory slot of every row (0..n_traj-1), ``pos`` its 0-based position.
    """

    first: np.ndarray
    lengths: np.ndarray
    slot: np.ndarray
    pos: np.ndarray

    @property
    def n_traj(self) -> int:
        return int(self.first.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.lengths.max()) if self.lengths.size else 0

    def to_padded(self, x: np.ndarray, fill: float = 0.0) -> np.ndarray:
        out = np.full((self.n_traj, self.max_len), fill, dtype=np.float64)
        out[self.slot, self.pos] = x
        return out

    def from_padded(self, x_NT: np.ndarray) -> np.ndarray:
        return x_NT[self.slot, self.pos]

    def per_traj(self, x: np.ndarray) -> np.ndarray:
        """Value of a per-row column at each trajectory's first row."""
        return x[self.first]


def layout(batch: StepBatch) -> Layout:
    """Layout of a canonical batch (rows grouped by trajectory, ordered by turn)."""
    n = len(batch)
    start = np.ones(n, dtype=bool)
    if n:
        start[1:] = batch.traj_idx[1:] != batch.traj_idx[:-1]
    first = np.flatnonzero(start)
    lengths = np.diff(np.append(first, n))
    slot = np.cumsum(start) - 1
    pos = np.arange(n) - first[slot]
    return Layout(first=first, lengths=lengths, slot=slot, pos=pos)


def backward_recursion(lay: Layout, delta: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """y_t = delta_t + coef_t * y_{t+1} within each trajectory (y after the last row = 0).

    ``coef`` is per row; set it to 0 where the recursion must not carry over (segment ends).
    """
    d_NT = lay.to_padded(delta)
    c_NT = lay.to_padded(coef)
    y_NT = np.zeros_like(d_NT)
    carry = np.zeros(lay.n_traj)
    for t in range(lay.max_len - 1, -1, -1):
        carry = d_NT[:, t] + c_NT[:, t] * carry
        y_NT[:, t] = carry
    return lay.from_padded(y_NT)


def next_in_traj(lay: Layout, x: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """x at the following row of the same trajectory; ``fill`` on each trajectory's last row."""
    out = np.full(x.shape[0], fill, dtype=np.float64)
    if x.shape[0] > 1:
        out[:-1] = x[1:]
    last = lay.first + lay.lengths - 1
    out[last] = fill
    return out


def discounted_returns(lay: Layout, reward: np.ndarray, gamma: float) -> np.ndarray:
    """R_t = sum_{k>=t} gamma^(k-t) r_k within each trajectory."""
    return backward_recursion(lay, reward, np.full(reward.shape[0], gamma))
