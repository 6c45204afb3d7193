"""SPO: single-stream policy optimisation with a persistent per-task Beta tracker (Xu & Ding 2025).

Group baselines vanish when a group's outcomes are all equal and need several rollouts per task.
SPO keeps, per task, a Beta(alpha, beta) estimate of the policy's success probability across
iterations instead, so one rollout per task (``rollout.group_size: 1``) is enough:

    p_hat = alpha / (alpha + beta)                 (read before this batch updates the tracker)
    A_i   = r_i - p_hat(task_i),  then  A <- (A - mean_batch A) / (std_batch A + eps)
    after use:  alpha <- rho alpha + r,   beta <- rho beta + (1 - r)

The batch statistics are over trajectories (each once; unbiased std), and every row of a trajectory
gets its advantage; ``c_inv`` is then subtracted from invalid rows, as in ``grpo``.

Sources. Authors' code, verl-project/verl-recipe at 550d42f5, ``spo/spo_ray_trainer.py``
(``RayPPOTrainer.fit`` and ``_get_spo_rho``); run script volcengine/verl ``recipe/spo/run_spo.sh``;
paper arXiv 2509.13232. From the code:
- a task never seen starts at alpha = beta = 0.5 (the ``offline_N = 0`` branch); the tracker is keyed by
  the prompt text there, by ``task_id`` here;
- p_hat is read before the batch's update; the advantage is centred by p_hat, then z-scored over the
  whole batch with ``torch.std`` (unbiased) and eps 1e-8 (a batch of one trajectory gets 0, where
  ``torch.std`` would give NaN);
- the reward is the episode's score, binary in the authors' runs (``retool.py`` maps it to {0, 1});
  here ``r = clip((R - min_reward) / (max_reward - min_reward), 0, 1)``, so the defaults keep {0, 1}
  outcomes and clip a negative score to 0 as that script does (use ``max_reward=10`` for ALFWorld's scale);
- ``update="last"``: the update is computed per sample from the pre-batch (alpha, beta) and written back
  per prompt, so when a task has several trajectories in the batch only the last one's update survives
  (``prompt2alpha[p] = alpha[i]`` in a loop). ``update="sum"`` [ours] counts every trajectory once:
  ``alpha <- rho alpha + sum r``, ``beta <- rho beta + sum (1 - r)``; prefer it with group_size > 1;
- ``rho_mode="constant"``: ``rho`` for every task (the code's ``rho.type: constant``; its value is not in
  the stored config, so the default 0.875 [ours] is the run script's lower clip, a memory of ~8 visits);
- ``rho_mode="kl"`` (the authors' runs): ``rho = clip(2^(-D / 0.06), rho_min, rho_max)`` with
  ``rho_min`` 0.875 (``run_spo.sh``) and ``rho_max`` 0.96, where D is the policy drift of the task:
  the token mean of ``|log pi_then - log pi_now|`` over the task's last stored response, scored when it
  was stored and again now (0 for a task seen for the first time). D comes from the caller as the row
  input ``drift`` (one value per row; a trajectory's first row is read, and in a task with several
  trajectories the last one's rho is used); without it this mode raises ``MissingInputError``. The
  code measures D after the iteration's actor update; a caller that estimates before its update
  measures the drift up to that point, so the update of the current iteration counts at the next visit.
  The trainer supplies ``drift`` in this mode (the ``policy_drift`` trait; ``trainers.drift``) with
  the code's timing: after the update it rescores each batch task's stored response (its last
  trajectory, every turn's tokens) and stores the new one with its scores under the updated weights,
  all in one scoring pass. The advantages do not read D, so the trainer takes them from a call before
  the update and the tracker from a call after it, with D.

Prioritised sampling (``sampling="prioritized"``, default, as the authors' ``fit``): the trainer
draws each iteration's tasks with probability proportional to ``sqrt(p_hat (1 - p_hat)) + 0.05``
(the estimator's ``task_weights``), so tasks the policy always or never solves come up less. The
authors reweight within each data-loader batch (``np.random.choice(M, train_batch_size, p=w/sum w)``,
with replacement only when the batch is smaller); the trainer here draws from the whole train split
at once (with replacement only when it holds fewer tasks than ``rollout.groups``), the case of a
loader batch that holds every prompt. ``sampling="uniform"`` [ours] keeps the trainer's uniform draw.
Their offline initialisation from N_eff samples,
``alpha0 = N_init (sum s + 0.5) / (N_eff + 1)`` and ``beta0 = N_init (N_eff - sum s + 0.5) / (N_eff + 1)``
with ``N_init = 1 / (1 - rho_min)``, can be had by seeding the state before training.

State (``stateful=True``): ``{"tasks": {task_id: [alpha, beta]}}``; only tasks in the batch change.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.credit.base import Advantages, MissingInputError, register_estimator
from agentrl.credit.ops import check_choice, check_finite, layout
from agentrl.types import StepBatch

RHO_MODES = ("constant", "kl")
UPDATES = ("last", "sum")
SAMPLINGS = ("prioritized", "uniform")
EXPLORATION = 0.05  # the authors' EXPLORATION_EPSILON: every task keeps some weight
INIT = 0.5  # alpha = beta = 0.5 for a task never seen (the code's offline_N = 0)
PAPER = "Xu & Ding 2025, Single-stream Policy Optimization (SPO), arXiv 2509.13232"


def tracker_of(state: dict[str, Any]) -> dict[str, list[float]]:
    """The per-task (alpha, beta) table in ``state``, created when absent; a malformed one is refused."""
    tasks = state.setdefault("tasks", {})
    if not isinstance(tasks, dict):
        raise ValueError(f"spo state: 'tasks' must map task ids to [alpha, beta], got {type(tasks).__name__}")
    for task, ab in tasks.items():
        ok = isinstance(ab, list) and len(ab) == 2 and all(isinstance(v, (int, float)) for v in ab)
        if not ok or not all(np.isfinite(ab)) or min(ab) < 0 or ab[0] + ab[1] <= 0:
            raise ValueError(
                f"spo state: task {task!r} has {ab!r}; expected [alpha, beta], finite, >= 0, not both 0"
            )
    return tasks


def task_rho(
    rho_mode: str, rho: float, rho_min: float, rho_max: float, drift_half: float, drift: np.ndarray | None
) -> np.ndarray | float:
    """rho per trajectory from its drift D (``kl``), or the constant."""
    if rho_mode == "constant":
        return rho
    if drift is None:
        raise MissingInputError(
            "estimator 'spo' with rho_mode='kl' needs input 'drift': per row, the policy drift D of its task "
            "(token mean of |log pi_then - log pi_now| on the task's last stored response; 0 on a first visit); "
            "or use rho_mode='constant'"
        )
    if np.any(drift < 0):
        raise ValueError("input 'drift' must be >= 0 (a mean absolute log-prob difference)")
    return np.clip(np.exp2(-drift / drift_half), rho_min, rho_max)


def task_weights(state: Any, task_ids: Any, options: Any) -> np.ndarray | None:
    """``sqrt(p_hat (1 - p_hat)) + 0.05`` per train task (p_hat 0.5 for a task never seen), or None
    (a uniform draw) with ``sampling="uniform"``."""
    sampling = options.get("sampling", "prioritized")
    check_choice("sampling", sampling, SAMPLINGS)
    if sampling == "uniform":
        return None
    tracker = tracker_of(dict(state))
    ab = np.array([tracker.get(str(t), [INIT, INIT]) for t in task_ids], dtype=np.float64).reshape(-1, 2)
    p_hat = ab[:, 0] / (ab[:, 0] + ab[:, 1])
    return np.sqrt(p_hat * (1.0 - p_hat)) + EXPLORATION


def wants_drift(options: Any) -> bool:
    """The trainer measures the policy drift only for ``rho_mode="kl"``."""
    return options.get("rho_mode", "constant") == "kl"


@register_estimator(
    "spo",
    paper=PAPER,
    stateful=True,
    row_inputs=("drift",),
    task_weights=task_weights,
    policy_drift=wants_drift,
)
def spo(
    batch: StepBatch,
    *,
    state: dict[str, Any],
    rho_mode: str = "constant",
    rho: float = 0.875,
    rho_min: float = 0.875,
    rho_max: float = 0.96,
    drift_half: float = 0.06,
    drift: np.ndarray | None = None,
    update: str = "last",
    min_reward: float = 0.0,
    max_reward: float = 1.0,
    eps: float = 1e-8,
    invalid_penalty: float = 0.1,
    sampling: str = "prioritized",
) -> Advantages:
    """Outcome minus a persistent per-task Beta baseline, z-scored over the batch; the tracker then learns.

    ``sampling`` is read by the trainer's task draw (``task_weights``), not here."""
    check_choice("rho_mode", rho_mode, RHO_MODES)
    check_choice("sampling", sampling, SAMPLINGS)
    check_choice("update", update, UPDATES)
    for name, value in (("rho", rho), ("rho_min", rho_min), ("rho_max", rho_max)):
        check_finite(name, value, 0.0, 1.0)
    if rho_min > rho_max:
        raise ValueError(f"option rho_min={rho_min!r} must not exceed rho_max={rho_max!r}")
    check_finite("drift_half", drift_half, 0.0)
    if drift_half <= 0:
        raise ValueError(f"option drift_half={drift_half!r} must be > 0")
    check_finite("min_reward", min_reward)
    check_finite("max_reward", max_reward)
    if not max_reward > min_reward:
        raise ValueError(f"option max_reward={max_reward!r} must exceed min_reward={min_reward!r}")
    check_finite("eps", eps, 0.0)
    if eps <= 0:
        raise ValueError(f"option eps={eps!r} must be > 0 (a batch of equal advantages has std 0)")
    check_finite("invalid_penalty", invalid_penalty)
    tracker = tracker_of(state)
    lay = layout(batch)
    r = np.clip((lay.per_traj(batch.outcome) - min_reward) / (max_reward - min_reward), 0.0, 1.0)
    rho_t = task_rho(
        rho_mode, rho, rho_min, rho_max, drift_half, None if drift is None else lay.per_traj(drift)
    )
    names, code = np.unique(batch.task_names[lay.per_traj(batch.group_idx)], return_inverse=True)
    prior = np.array([tracker.get(str(t), [INIT, INIT]) for t in names], dtype=np.float64).reshape(-1, 2)
    alpha, beta = prior[:, 0], prior[:, 1]
    a = r - (alpha / (alpha + beta))[code]
    n = a.shape[0]
    centred = a - a.mean()
    std = float(np.sqrt(np.sum(centred * centred) / (n - 1))) if n > 1 else 0.0
    adv = centred / (std + eps)
    # the tracker update, after use: the task's last trajectory gives its rho (and, for "last", its r)
    last = np.full(names.shape[0], -1, dtype=np.int64)
    np.maximum.at(last, code, np.arange(n))
    rho_k = rho_t[last] if isinstance(rho_t, np.ndarray) else np.full(names.shape[0], rho_t)
    won: np.ndarray = r[last] if update == "last" else np.bincount(code, weights=r, minlength=names.shape[0])
    lost: np.ndarray = (
        1.0 - r[last] if update == "last" else np.bincount(code, weights=1.0 - r, minlength=names.shape[0])
    )
    new_alpha, new_beta = rho_k * alpha + won, rho_k * beta + lost
    for k, task in enumerate(names):
        tracker[str(task)] = [float(new_alpha[k]), float(new_beta[k])]
    return Advantages(step=adv[lay.slot] - invalid_penalty * (~batch.valid))
