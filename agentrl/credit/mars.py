"""MARS / MARSHAL: turn-level returns normalised per agent role (Yuan et al. 2025, "MARSHAL:
Incentivizing Multi-Agent Reasoning via Self-Play with Strategic LLMs", arXiv 2510.15414).

Why: GRPO gives every turn of a trajectory the same normalised outcome, so in a long multi-turn
game a good move and a blunder share one credit; and in self-play the players' returns differ
systematically (moving first wins more), so pooling them biases each. MARS sums the rewards of the
turns still to come *before* normalising (a turn-level return), and normalises within each role.

Formula [paper, via the card; the authors' code, thu-nics/MARS, agrees where noted]:
``r_t = turn_reward_t + outcome * [t is the trajectory's last turn]`` (the game result comes as the
reward of the final turn, as the MARS env manager places it [code]),
``G_t = sum_{k>=t} gamma^(k-t) r_k`` per trajectory (``compute_reinforce_return`` on rewards placed at
each turn's end token, ``use_turn_scores: true``: every token of a turn carries its turn's G [code];
the code discounts per token, which its gamma 1 makes the same as our per-turn discount),
``A_t = (G_t - mu_P) / (sigma_P + eps)`` over the pool P of all turns of the same role (unbiased std),
then the invalid-action penalty on invalid rows, unscaled, after normalising (as ``grpo``) [ours].

Roles in a single-agent env [card: "single-agent case = GiGPO's step term with one cluster per
group, time-index free"]: a role is a seat of the game (the code splits the batch by the player
suffix ``_p0`` / ``_p1`` of ``group_ids``, ``reward_normalize_by_player`` and
``normalize_unique_values_by_player`` in ``roll/utils/functionals.py``). One agent is one role, so P
is every turn of every trajectory of the group: all positions pooled, unlike MT-GRPO's per-turn
pools and GiGPO's per-state anchors. For self-play batches, ``roles`` takes a role id per row (e.g.
the seat); rows of different roles never share a pool.

Options and where they follow the sources (paper default, the code's behaviour as an option):
- ``gamma`` 1.0 (the shipped configs' ``gamma: 1``) [code].
- ``mode``: "mean_std" (the paper's (G - mu)/sigma, default) or "mean" (G - mu, the shipped
  configs' ``advantage_norm: mean``) [code].
- ``pool``: "group" (default: the trajectories of one task; the code's ``reward_normalization.
  grouping: traj_group_id``) or "batch" (one pool per role over the whole batch, as the code's
  ``normalize_unique_values_by_player`` pools every trajectory of a player; its reward
  normalisation groups by env ``tags``, which a one-env batch also is).
- ``stats``: "turns" (default: mu, sigma over every turn, each counted once, as the paper) or
  "unique" (over the distinct values of G in the pool, as the code's ``normalize_unique_values``:
  one value taken by many turns counts once; one distinct value gives 0) [code]. The code also
  pools the 0 that padding positions of shorter sequences hold; a row-level estimator has no
  padding, so that is not reproduced.
- ``reward_norm``: "none" (default, the paper) or "mean" / "mean_std": the code's
  ``separate_norm_for_selfplay`` pass, which normalises the per-turn rewards within each pool
  (every turn's reward counted, zero rewards included; ``mean_std`` gives 0 when sigma <= 1e-6)
  before the returns are summed, so G picks up a bias proportional to the turns left [code].
- ``whiten``: standardise the advantages over all rows of the batch after the pool normalisation,
  as the shipped configs' ``whiten_advantages: true`` does over tokens [code]. The configs'
  ``whiten_rewards: true`` whitens token rewards over all response tokens, which densifies them;
  it has no row-level equivalent and is not offered.
The shipped self-play recipe is therefore ``mode="mean", stats="unique", reward_norm="mean",
whiten=True, pool="batch"`` up to those token-level steps. Code read: thu-nics/MARS
``roll/utils/functionals.py`` at 7714e9e8 (per-player reward normalisation, reinforce return) and
``normalize_unique_values`` / ``normalize_unique_values_by_player`` (read in a derived copy of that
file in the store; the thu-nics/MARS version holding them was not stored, its config field
``advantage_norm`` is, in ``roll/pipeline/agentic/agentic_config.py`` at dcf5ebb9),
``examples/tictactoe/agentic_val_tictactoe_selfplay.yaml`` at 254c1d76.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.gae import last_rows
from agentrl.credit.ops import (
    MODES,
    check_choice,
    check_finite,
    discounted_returns,
    factorize,
    group_mean_std,
    layout,
    normalize,
)
from agentrl.credit.ops import whiten as whiten_rows
from agentrl.types import StepBatch

POOLS = ("group", "batch")
STATS = ("turns", "unique")
REWARD_NORMS = ("none", "mean", "mean_std")
REWARD_NORM_TOL = 1e-6  # the code's score_normalize: a pool whose reward std is <= this normalises to 0
PAPER = (
    "Yuan et al. 2025, MARSHAL: Incentivizing Multi-Agent Reasoning via Self-Play with Strategic LLMs, "
    "arXiv 2510.15414 (code thu-nics/MARS)"
)


def role_pools(batch: StepBatch, pool: str, roles: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Dense pool id per row: (group, role) for pool="group", role alone for pool="batch"."""
    role = np.zeros(len(batch)) if roles is None else roles
    if pool == "group":
        return factorize(batch.group_idx, role)
    return factorize(role)


def normalize_rewards(r: np.ndarray, pool_id: np.ndarray, n_pools: int, method: str) -> np.ndarray:
    """The code's per-player reward normalisation over every turn of the pool (unbiased std)."""
    mean, std, _ = group_mean_std(r, pool_id, n_pools, ddof=1)
    if method == "mean":
        return r - mean[pool_id]
    ok = std[pool_id] > REWARD_NORM_TOL
    return np.where(ok, (r - mean[pool_id]) / (std[pool_id] + REWARD_NORM_TOL), 0.0)


def pool_stats(g: np.ndarray, pool_id: np.ndarray, n_pools: int, stats: str) -> tuple[np.ndarray, np.ndarray]:
    """Per pool: mean and unbiased std of the turn returns, over every turn or over distinct values."""
    if stats == "turns":
        mean, std, _ = group_mean_std(g, pool_id, n_pools, ddof=1)
        return mean, std
    codes, n_distinct = factorize(pool_id, g)
    first = np.zeros(n_distinct, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(g))[::-1]  # any member of each distinct (pool, value) will do
    mean, std, _ = group_mean_std(g[first], pool_id[first], n_pools, ddof=1)
    return mean, std


@register_estimator("mars", fields=("turn_reward",), row_inputs=("roles",), paper=PAPER)
def mars(
    batch: StepBatch,
    *,
    gamma: float = 1.0,
    mode: str = "mean_std",
    eps: float = 1e-6,
    pool: str = "group",
    stats: str = "turns",
    reward_norm: str = "none",
    whiten: bool = False,
    invalid_penalty: float = 0.1,
    roles: np.ndarray | None = None,
) -> Advantages:
    """Turn-level return-to-go of turn + outcome rewards, normalised within each role's pool.

    ``roles``: a role id per row (self-play seats); None = one role (a single-agent env).
    """
    check_finite("gamma", gamma, 0.0, 1.0)
    check_choice("mode", mode, MODES)
    check_finite("eps", eps, 0.0)
    check_choice("pool", pool, POOLS)
    check_choice("stats", stats, STATS)
    check_choice("reward_norm", reward_norm, REWARD_NORMS)
    check_finite("invalid_penalty", invalid_penalty)
    if isinstance(roles, dict):
        raise ValueError("estimator 'mars' takes roles as one per-row array, not a dict")
    lay = layout(batch)
    pool_id, n_pools = role_pools(batch, pool, roles)
    reward = batch.column("turn_reward") + batch.outcome * last_rows(lay)
    if reward_norm != "none":
        reward = normalize_rewards(reward, pool_id, n_pools, reward_norm)
    g = discounted_returns(lay, reward, gamma)
    mean, std = pool_stats(g, pool_id, n_pools, stats)
    adv = normalize(g, mean[pool_id], std[pool_id], mode, eps)
    if whiten:
        adv = whiten_rows(adv)
    return Advantages(step=adv - invalid_penalty * (~batch.valid))
