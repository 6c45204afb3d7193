"""GAE/PPO at step level: one critic value per turn, advantages by the GAE recursion.

``delta_t = r_t + gamma*V_{t+1}*(1-done_t) - V_t`` and ``A_t = delta_t + gamma*lam*(1-done_t)*A_{t+1}``
(Schulman et al. 2016, at turn level). The value after a trajectory's last row is 0; a truncated trajectory
may instead bootstrap from its last row's own value (``bootstrap_truncated``), since the episode
did not really end there. The helpers here are shared with MT-PPO (turn_level.py).

Advantages are whitened over the batch by default (``whiten``), as PPO's implementations do: verl's
``compute_gae_advantage_return`` (``masked_whiten`` over the response tokens, always; verl-agent's PPO
baseline runs on it) and OpenAI baselines' ppo2 (per minibatch). Here over rows, each
response once. Unwhitened, a critic that lags the policy makes a whole batch's advantages one-signed:
on the maze MT-PPO's mean advantage fell to -1.8 (max +0.09) one iteration before its policy collapsed
(training success 0.81 -> 0.06, 61% invalid actions; docs/benchmarks.md). ``whiten=False`` keeps the
raw A = G - V.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.credit.base import Advantages, MissingInputError, ValueHeadSpec, register_estimator
from agentrl.credit.ops import Layout, backward_recursion, layout, next_in_traj
from agentrl.credit.ops import whiten as whiten_rows
from agentrl.types import StepBatch


def row_values(name: str, values: Any) -> np.ndarray:
    """The critic's per-row array; a dict of heads is a caller error here (HiPER only)."""
    if values is None:
        raise MissingInputError(
            f"estimator {name!r} needs input(s) ['values']; pass values=<one critic value per row>"
        )
    if isinstance(values, dict):
        raise ValueError(
            f"estimator {name!r} takes values as one per-row float array, not a dict of heads {sorted(values)}"
        )
    return values


def last_rows(lay: Layout) -> np.ndarray:
    """bool per row: the last row of its trajectory (from the layout, so subsets work too)."""
    n = int(lay.slot.shape[0])
    out = np.zeros(n, dtype=bool)
    out[lay.first + lay.lengths - 1] = True
    return out


def end_bootstrap(batch: StepBatch, value: np.ndarray, bootstrap_truncated: bool) -> np.ndarray:
    """Value after a trajectory's last row: the row's own value for truncated trajectories when
    ``bootstrap_truncated`` (the critic's best guess of what follows), else 0."""
    if not bootstrap_truncated:
        return np.zeros_like(value)
    return np.where(batch.truncated & ~batch.done, value, 0.0)


def gae_advantages(
    batch: StepBatch,
    lay: Layout,
    reward: np.ndarray,
    value: np.ndarray,
    *,
    gamma: float,
    lam: float,
    bootstrap_truncated: bool,
) -> np.ndarray:
    """The GAE recursion over the rows of each trajectory."""
    not_done = 1.0 - batch.done
    value_next = np.where(
        last_rows(lay), end_bootstrap(batch, value, bootstrap_truncated), next_in_traj(lay, value)
    )
    delta = reward + gamma * value_next * not_done - value
    return backward_recursion(lay, delta, gamma * lam * not_done)


def gae_result(
    adv: np.ndarray, value: np.ndarray, batch: StepBatch, *, invalid_penalty: float, whiten: bool
) -> Advantages:
    """Apply the invalid-action penalty (to the row only, after the recursion, so it never leaks
    to earlier steps), keep A + V as the value target, and optionally whiten over the batch."""
    adv = adv - invalid_penalty * (~batch.valid)
    returns = adv + value
    step = whiten_rows(adv) if whiten else adv
    return Advantages(step=step, extras={"returns": returns})


@register_estimator(
    "gae",
    inputs=("values",),
    row_inputs=("values",),
    value_heads={"value": ValueHeadSpec(target="returns")},
    paper="Schulman et al. 2016 (GAE), arXiv 1506.02438; PPO: Schulman et al. 2017, arXiv 1707.06347",
)
def gae(
    batch: StepBatch,
    *,
    values: np.ndarray | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    bootstrap_truncated: bool = False,
    whiten: bool = True,
    invalid_penalty: float = 0.1,
) -> Advantages:
    """Step-level GAE from per-turn critic values (defaults gamma 1.0, lam 1.0: Monte-Carlo
    return minus V, the usual choice for sparse-reward LLM agents).

    ``extras["returns"]`` = A + V, the critic's regression target (before whitening).
    ``whiten`` (default, as verl and baselines' ppo2) standardises the advantages over the whole batch.
    """
    value = row_values("gae", values)
    lay = layout(batch)
    adv = gae_advantages(
        batch, lay, batch.reward, value, gamma=gamma, lam=lam, bootstrap_truncated=bootstrap_truncated
    )
    return gae_result(adv, value, batch, invalid_penalty=invalid_penalty, whiten=whiten)
