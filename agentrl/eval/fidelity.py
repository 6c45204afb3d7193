"""Credit fidelity: how close each estimator's step advantages come to the TRUE advantages.

On the built-in maze the rollout policy is a fixed table over admissible actions, so its exact
Q and V follow by dynamic programming (``agentrl.envs.maze.exact_values``) and every visited step
has a true advantage A = Q_t(s, a) - V_t(s). Groups of N trajectories are sampled per task, every
registered estimator scores them, and we report per estimator and group size:

- ``corr``: Pearson correlation between estimated and true advantages over all rows;
- ``sign``: share of rows with a non-zero true advantage whose estimate has the same sign;
- ``noise``: variance of the estimate for the same (task, state, t, action) across independently
  resampled groups, in units of the estimator's overall variance (0 = perfectly repeatable).

Critic-based estimators get the exact V as their critic (an oracle critic, labelled as such);
estimators needing fields the maze does not produce (turn rewards, HiPER tags) are listed as
skipped with the reason.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from agentrl.credit import MissingInputError, available_estimators, estimate, estimator_info
from agentrl.envs.maze import ExactValues, MazeEnv
from agentrl.types import Step, StepBatch, Trajectory

TablePolicy = Callable[[str, list[str]], Sequence[float]]


@dataclass(frozen=True)
class FidelityRow:
    estimator: str
    group_size: int
    corr: float
    sign: float
    noise: float
    rows: int
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def improved_policy(env: MazeEnv, task_id: str, gamma: float, greedy_weight: float = 0.5) -> TablePolicy:
    """A better-than-random fixed policy: ``greedy_weight`` on the action that is greedy with
    respect to the uniform policy's Q at t=0, the rest spread uniformly (one step of policy
    improvement, so advantages are neither all tiny nor all one-sided)."""
    uniform = env.exact_values(task_id, None, gamma)
    best = {}
    for s, key in enumerate(uniform.state_keys):
        if uniform.actions[s]:
            best[key] = int(np.nanargmax(uniform.q_TSA[0, s, : len(uniform.actions[s])]))

    def policy(state_key: str, actions: list[str]) -> list[float]:
        p = np.full(len(actions), (1 - greedy_weight) / len(actions))
        p[best[state_key]] += greedy_weight
        return list(p)

    return policy


def sample_group(
    env: MazeEnv,
    task_id: str,
    group_id: str,
    n: int,
    policy: TablePolicy,
    values: ExactValues,
    env_seed: int,
    rng: np.random.Generator,
) -> list[Trajectory]:
    """N trajectories from one identical initial state; each step's info holds its true A and V."""
    trajs = []
    for i in range(n):
        obs, info = env.reset(seed=env_seed, options={"task_id": task_id})
        steps: list[Step] = []
        terminated = truncated = False
        while not (terminated or truncated):
            key, actions, t = info["state_key"], info["admissible_actions"], len(steps)
            action = actions[int(rng.choice(len(actions), p=np.asarray(policy(key, actions))))]
            truth = {"true_advantage": values.advantage(key, t, action), "true_value": values.v(key, t)}
            obs_next, reward, terminated, truncated, info = env.step(action)
            steps.append(Step(obs=obs, action=action, reward=float(reward), valid=bool(info["valid"]), state_key=key, info=truth))
            obs = obs_next
        trajs.append(
            Trajectory(task_id, group_id, f"{group_id}/{i}", steps, terminated=terminated, truncated=truncated, success=bool(info["success"]))
        )
    return trajs


def _inputs(name: str, batch: StepBatch, true_value: np.ndarray, gamma: float) -> dict[str, object]:
    info = estimator_info(name)
    cfg: dict[str, object] = {}
    if "gamma" in info.options:
        cfg["gamma"] = gamma
    for key in info.inputs:
        if key != "values":
            raise MissingInputError(f"needs input {key!r}")
        cfg["values"] = true_value
    return cfg


def credit_fidelity(
    *,
    tasks: int = 8,
    group_sizes: Iterable[int] = (2, 4, 8, 16),
    resamples: int = 10,
    gamma: float = 0.95,
    size: int = 3,
    n_doors: int = 1,
    slip: float = 0.1,
    max_steps: int = 20,
    estimators: Sequence[str] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[FidelityRow]:
    """Fidelity of every estimator (or ``estimators``) for each group size; see the module doc."""
    env = MazeEnv(size=size, n_doors=n_doors, slip=slip, max_steps=max_steps)
    task_ids = list(env.task_ids())[:tasks]
    policies = {tid: improved_policy(env, tid, gamma) for tid in task_ids}
    truths = {tid: env.exact_values(tid, policies[tid], gamma) for tid in task_ids}
    names = list(estimators or available_estimators())
    rng = np.random.default_rng(seed)
    rows: list[FidelityRow] = []
    for n in group_sizes:
        est_by_name: dict[str, list[np.ndarray]] = defaultdict(list)
        true_parts: list[np.ndarray] = []
        keys_parts: list[list[tuple]] = []
        skipped: dict[str, str] = {}
        for r in range(resamples):
            trajs = []
            for tid in task_ids:
                trajs += sample_group(env, tid, f"{tid}/r{r}", n, policies[tid], truths[tid], env_seed=seed * 7919 + r, rng=rng)
            batch = StepBatch.from_trajectories(trajs)
            steps = [s for t in trajs if t.steps for s in t.steps]
            true_adv = np.array([s.info["true_advantage"] for s in steps])
            true_value = np.array([s.info["true_value"] for s in steps])
            true_parts.append(true_adv)
            keys_parts.append([(t.task_id, s.state_key, k, s.action) for t in trajs for k, s in enumerate(t.steps)])
            for name in names:
                if name in skipped:
                    continue
                try:
                    est_by_name[name].append(estimate(name, batch, **_inputs(name, batch, true_value, gamma)).step)
                except MissingInputError as e:
                    skipped[name] = str(e)
        if progress:
            progress(f"group size {n}: {resamples} resamples x {len(task_ids)} tasks sampled")
        true_all = np.concatenate(true_parts)
        keys_all = [k for part in keys_parts for k in part]
        resample_of = np.concatenate([np.full(len(p), r) for r, p in enumerate(true_parts)])
        for name in names:
            if name in skipped:
                rows.append(FidelityRow(name, n, math.nan, math.nan, math.nan, 0, note=f"skipped: {skipped[name]}"))
                continue
            est_all = np.concatenate(est_by_name[name])
            note = "exact V as critic (oracle)" if "values" in estimator_info(name).inputs else ""
            rows.append(
                FidelityRow(
                    name, n, _corr(est_all, true_all), _sign(est_all, true_all), _noise(est_all, keys_all, resample_of), int(est_all.size), note
                )
            )
    return rows


def _corr(est: np.ndarray, true: np.ndarray) -> float:
    if est.std() == 0 or true.std() == 0:
        return 0.0
    return float(np.corrcoef(est, true)[0, 1])


def _sign(est: np.ndarray, true: np.ndarray) -> float:
    mask = np.abs(true) > 1e-9
    if not mask.any():
        return math.nan
    return float(np.mean(np.sign(est[mask]) == np.sign(true[mask])))


def _noise(est: np.ndarray, keys: list[tuple], resample_of: np.ndarray) -> float:
    """Mean across-resample variance of the per-resample mean estimate of each key, over the
    estimator's overall variance; keys seen in fewer than two resamples are left out."""
    scale = est.var()
    if scale == 0:
        return 0.0
    per_key: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for k, r, a in zip(keys, resample_of, est):
        per_key[k][int(r)].append(float(a))
    variances = [np.var([np.mean(v) for v in by_r.values()], ddof=1) for by_r in per_key.values() if len(by_r) >= 2]
    return float(np.mean(variances) / scale) if variances else math.nan


def fidelity_markdown(rows: Sequence[FidelityRow]) -> str:
    """A Markdown table: one line per estimator, one column group per group size."""
    sizes = sorted({r.group_size for r in rows})
    by = {(r.estimator, r.group_size): r for r in rows}
    head = "| estimator | " + " | ".join(f"corr N={n} | sign N={n} | noise N={n}" for n in sizes) + " | note |"
    sep = "|" + "---|" * (1 + 3 * len(sizes) + 1)
    lines = [head, sep]
    for name in sorted({r.estimator for r in rows}):
        cells = []
        for n in sizes:
            r = by[(name, n)]
            cells += [_fmt(r.corr), _fmt(r.sign), _fmt(r.noise)]
        note = by[(name, sizes[0])].note
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"
