"""KRPO: a 1-D Kalman filter over a group's outcomes as the baseline (billhhh/KRPO_LLMs_RL).

Instead of the group mean, each trajectory's baseline is a Kalman filter's estimate of the
group's mean reward after it has seen the rewards so far, in sampling order, and the filter's
variance takes the place of the group std:

    predict:  P- = P + Q               gain:  K = P- / (P- + R)
    update:   x  = x + K (r_i - x)      P = (1 - K) P-
    A_i = (r_i - x) / (sqrt(P) + eps)   (x, P after including r_i)

Sources. Authors' code, billhhh/KRPO_LLMs_RL at 582198fa, ``train.py``: ``KalmanFilter`` and
``group_advantages`` (a fresh filter per group, ``x0 = 0``, ``P0 = 1``, ``process_var`` Q = 1e-5,
``meas_var`` R = 1e-2, eps 1e-8, rewards in the order they were sampled); the paper is not in the
store. Our float64 arithmetic differs from the code's float32 tensors by rounding only.

What follows from the code, kept as is: the result depends on the order of the group (the first
trajectory sees a baseline pulled towards x0 = 0: with K ~ 0.99 it is 0.99 r); P does not depend on
the rewards, so the scale 1/sqrt(P) is the same for every group (~10 for the first trajectory, growing
along the group as P shrinks); a singleton group gets (r - K r) / sqrt(P_1), not 0; a group of equal
rewards does not get 0 (its first members still see x below r).

Sampling order here is the trajectories' order in the batch (``traj_idx``), i.e. the rollout's.

``persist=True`` [ours, a named deviation]: one filter per task, carried across iterations in the
estimator state (``{"tasks": {task_id: [x, P]}}``) instead of a fresh one per group; within a batch
a task's groups feed the filter one after the other, in batch order. The authors' behaviour is the
default (``persist=False``), which neither reads nor writes the state.

Invalid actions: ``c_inv`` is subtracted from the invalid row at the end, as in ``grpo``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import check_finite, factorize, layout
from agentrl.types import StepBatch

PAPER = "KRPO, Kalman-filter baseline for GRPO-style training; code billhhh/KRPO_LLMs_RL (train.py)"


def kalman_advantages(
    r: np.ndarray,
    key: np.ndarray,
    x: np.ndarray,
    p: np.ndarray,
    *,
    q: float,
    meas: float,
    eps: float,
) -> np.ndarray:
    """Advantages of rewards ``r`` fed in array order to filter ``key[i]`` (codes 0..K-1).

    ``x``, ``p``: each filter's state before the batch, updated in place. Vectorised over filters; the
    loop runs over positions within a filter (at most the largest group)."""
    n = r.shape[0]
    count = np.bincount(key, minlength=x.shape[0])
    order = np.argsort(key, kind="stable")
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n) - start[key[order]]
    by_pos = np.lexsort((np.arange(n), pos))
    ends = np.cumsum(np.bincount(pos))
    adv = np.empty(n)
    for rows in np.split(by_pos, ends[:-1]):
        k = key[rows]
        p_pred = p[k] + q
        gain = p_pred / (p_pred + meas)
        x_new = x[k] + gain * (r[rows] - x[k])
        p_new = (1.0 - gain) * p_pred
        x[k], p[k] = x_new, p_new  # each filter appears once at position j
        adv[rows] = (r[rows] - x_new) / (np.sqrt(p_new) + eps)
    return adv


def filters_of(state: dict[str, Any]) -> dict[str, list[float]]:
    """The per-task (x, P) table in ``state``, created when absent; a malformed one is refused."""
    tasks = state.setdefault("tasks", {})
    if not isinstance(tasks, dict):
        raise ValueError(f"krpo state: 'tasks' must map task ids to [x, P], got {type(tasks).__name__}")
    for task, xp in tasks.items():
        ok = isinstance(xp, list) and len(xp) == 2 and all(isinstance(v, (int, float)) for v in xp)
        if not ok or not all(np.isfinite(xp)) or xp[1] < 0:
            raise ValueError(f"krpo state: task {task!r} has {xp!r}; expected [x, P], finite, P >= 0")
    return tasks


@register_estimator("krpo", paper=PAPER, stateful=True)
def krpo(
    batch: StepBatch,
    *,
    state: dict[str, Any],
    process_var: float = 1e-5,
    meas_var: float = 1e-2,
    init_mean: float = 0.0,
    init_var: float = 1.0,
    eps: float = 1e-8,
    persist: bool = False,
    invalid_penalty: float = 0.1,
) -> Advantages:
    """Outcome minus a Kalman filter's running estimate of its group's mean, over the filter's std."""
    check_finite("process_var", process_var, 0.0)
    check_finite("meas_var", meas_var, 0.0)
    if meas_var <= 0:
        raise ValueError(f"option meas_var={meas_var!r} must be > 0")
    check_finite("init_mean", init_mean)
    check_finite("init_var", init_var, 0.0)
    check_finite("eps", eps, 0.0)
    if eps <= 0:
        raise ValueError(f"option eps={eps!r} must be > 0")
    if not isinstance(persist, bool):
        raise ValueError(f"option persist={persist!r} must be true or false")
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    r = lay.per_traj(batch.outcome)
    g = lay.per_traj(batch.group_idx)
    if not persist:  # the authors' code: a fresh filter per group
        key, n_keys = factorize(g)
        x, p = np.full(n_keys, float(init_mean)), np.full(n_keys, float(init_var))
        adv = kalman_advantages(r, key, x, p, q=process_var, meas=meas_var, eps=eps)
    else:
        filters = filters_of(state)
        names, key = np.unique(batch.task_names[g], return_inverse=True)
        prior = np.array([filters.get(str(t), [init_mean, init_var]) for t in names], dtype=np.float64)
        x, p = prior[:, 0].copy(), prior[:, 1].copy()
        adv = kalman_advantages(r, key, x, p, q=process_var, meas=meas_var, eps=eps)
        for k, task in enumerate(names):
            filters[str(task)] = [float(x[k]), float(p[k])]
    return Advantages(step=adv[lay.slot] - invalid_penalty * (~batch.valid))
