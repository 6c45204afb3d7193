"""Credit fidelity of tree rollouts against flat groups, at an equal budget of env steps.

The maze's exact Q - V (``agentrl.eval.fidelity``) scores estimators on groups sampled two ways:

- flat: N independent episodes per task (what every group method samples);
- tree: R roots per task, then each root continued from ``points`` of its turns (uniform over
  1..len-1) by ``width`` branches that restore the env's snapshot there and copy the turns before
  (as ``rollout(..., branching=...)`` does);
- chain: R roots per task, each continued from every ``interval``-th turn by ``width`` value-only
  episodes (``Branching(at="chain")``, for ``spo_chain``): they cost env steps and are never scored,
  as the trainer never trains them.

A step shared by several trajectories of a tree (a root's step and its copies) is one sample: it is
scored once, with the mean of its copies' advantages (the trainer's rule, ``merge_copies``). Each
row of the table says how many env steps per task its sampling took (copies excluded), so a tree
can be read against the flat group of the same cost. Estimators: any outcome-based one (the
default list compares the tree methods with GRPO and GiGPO, which run on either sampling); one that
needs another sampling (``spo_chain`` needs chains) has no row for the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from agentrl.credit import MissingInputError, estimate, estimator_info
from agentrl.envs.base import EnvSnapshot
from agentrl.envs.maze import ExactValues, MazeEnv
from agentrl.eval.fidelity import TablePolicy, improved_policy, row_credit
from agentrl.trainers.schedule import merge_copies
from agentrl.types import Step, StepBatch, Trajectory

DEFAULT_ESTIMATORS = ("grpo", "gigpo", "spo_tree", "treepo", "portool", "spo_chain")
DEFAULT_CHAINS = ((4, 4, 1), (2, 2, 1), (4, 4, 2))  # (roots, interval, width) of the chain samplings


@dataclass(frozen=True)
class TreeFidelityRow:
    estimator: str
    sampling: str  # "flat N=8", "tree 4 roots, 1 x 2 branches" or "chain 4 roots, every 4 turns x 1"
    env_steps: float  # sampled env steps per task (copies excluded), mean over tasks and resamples
    corr: float
    sign: float
    rows: int  # scored samples (one per sampled step)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _play(
    env: MazeEnv,
    policy: TablePolicy,
    values: ExactValues,
    rng: np.random.Generator,
    steps: list[Step],
    obs: str,
    info: dict,
    snapshots: dict[int, tuple[EnvSnapshot, str, dict]] | None,
) -> tuple[list[Step], bool, bool, bool]:
    """Continue an episode from (obs, info) after ``steps`` to its end; (steps, terminated, truncated, success)."""
    terminated = truncated = False
    while not (terminated or truncated):
        key, actions, t = info["state_key"], info["admissible_actions"], len(steps)
        action = actions[int(rng.choice(len(actions), p=np.asarray(policy(key, actions))))]
        truth = {"true_advantage": values.advantage(key, t, action)}
        obs_next, reward, terminated, truncated, info = env.step(action)
        steps.append(
            Step(
                obs=obs,
                action=action,
                reward=float(reward),
                valid=bool(info["valid"]),
                state_key=key,
                info=truth,
            )
        )
        obs = obs_next
        if snapshots is not None and not (terminated or truncated):
            snapshots[len(steps)] = (env.snapshot(), obs, info)
    return steps, terminated, truncated, bool(info["success"])


def sample_tree_group(
    env: MazeEnv,
    task_id: str,
    group_id: str,
    roots: int,
    width: int,
    points: int,
    policy: TablePolicy,
    values: ExactValues,
    env_seed: int,
    rng: np.random.Generator,
    interval: int | None = None,
) -> list[Trajectory]:
    """``roots`` episodes from one initial state, then ``width`` branches from ``points`` turns of each
    (``width`` 0: a flat group), or with ``interval`` from every ``interval``-th turn, value-only (a
    chain; every trajectory carries ``info["value_only"]``). Steps hold their true advantage; copies
    name their sampled step."""
    trajs: list[Trajectory] = []
    mark = {} if interval is None else {"value_only": False}
    for i in range(roots):
        obs, info = env.reset(seed=env_seed, options={"task_id": task_id})
        snaps: dict[int, tuple[EnvSnapshot, str, dict]] = {}
        steps, term, trunc, won = _play(env, policy, values, rng, [], obs, info, snaps if width else None)
        root = Trajectory(
            task_id,
            group_id,
            f"{group_id}/{i}",
            steps,
            terminated=term,
            truncated=trunc,
            success=won,
            info=dict(mark),
        )
        trajs.append(root)
        if not width or len(steps) < 2:
            continue
        if interval is not None:
            turns = np.arange(interval, len(steps), interval)
        else:
            turns = rng.choice(np.arange(1, len(steps)), size=min(points, len(steps) - 1), replace=False)
        for k in sorted(int(t) for t in turns):
            snap, obs_k, info_k = snaps[k]
            for j in range(width):
                env.restore(snap)
                copies = [
                    Step(
                        obs=s.obs,
                        action=s.action,
                        reward=s.reward,
                        valid=s.valid,
                        state_key=s.state_key,
                        info={**s.info, "copy_of": f"{root.traj_id}#{n}"},
                    )
                    for n, s in enumerate(steps[:k])
                ]
                branch, term, trunc, won = _play(env, policy, values, rng, copies, obs_k, info_k, None)
                trajs.append(
                    Trajectory(
                        task_id,
                        group_id,
                        f"{root.traj_id}.b{k}-{j}",
                        branch,
                        terminated=term,
                        truncated=trunc,
                        success=won,
                        info={} if interval is None else {"value_only": True},
                        parent_id=root.traj_id,
                        branch_turn=k,
                    )
                )
    return trajs


def tree_fidelity(
    *,
    tasks: int = 16,
    roots: int = 4,
    width: int = 2,
    points: int = 1,
    flat_sizes: Sequence[int] = (4, 8, 16),
    chains: Sequence[tuple[int, int, int]] = DEFAULT_CHAINS,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    resamples: int = 10,
    gamma: float = 0.95,
    size: int = 3,
    n_doors: int = 1,
    slip: float = 0.1,
    max_steps: int = 20,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[TreeFidelityRow]:
    """Correlation and sign agreement with the exact outcome advantage, per estimator and sampling."""
    env = MazeEnv(size=size, n_doors=n_doors, slip=slip, max_steps=max_steps)
    task_ids = list(env.task_ids())[:tasks]
    policies = {tid: improved_policy(env, tid, gamma) for tid in task_ids}
    truths = {tid: env.exact_values(tid, policies[tid], gamma) for tid in task_ids}
    samplings: list[tuple[str, int, int, int | None]] = [(f"flat N={n}", n, 0, None) for n in flat_sizes]
    samplings.append((f"tree {roots} roots, {points} x {width} branches", roots, width, None))
    samplings += [(f"chain {r} roots, every {k} turns x {m}", r, m, k) for r, k, m in chains]
    rng = np.random.default_rng(seed)
    rows = []
    for label, n_roots, w, interval in samplings:
        est: dict[str, list[np.ndarray]] = {name: [] for name in estimators}
        true_parts, sampled = [], []
        for r in range(resamples):
            trajs = []
            for tid in task_ids:
                trajs += sample_tree_group(
                    env,
                    tid,
                    f"{tid}/r{r}",
                    n_roots,
                    w,
                    points,
                    policies[tid],
                    truths[tid],
                    seed * 7919 + r,
                    rng,
                    interval,
                )
            batch = StepBatch.from_trajectories(trajs)
            steps = [s for t in trajs for s in t.steps]
            own = np.array(["copy_of" not in s.info for s in steps])
            sampled.append(own.sum() / len(task_ids))  # value-only continuations cost steps too
            scored = own & np.array([not t.info.get("value_only") for t in trajs for _ in t.steps])
            true_parts.append(np.array([s.info["true_advantage"] for s in steps])[scored])
            for name in estimators:
                cfg = {"gamma": gamma} if "gamma" in estimator_info(name).options else {}
                try:
                    adv, _ = merge_copies(batch, estimate(name, batch, **cfg))
                except MissingInputError:  # e.g. spo_chain on a sampling without chains
                    continue
                est[name].append(row_credit(name, adv)[scored])
        if progress:
            progress(f"{label}: {resamples} resamples x {len(task_ids)} tasks sampled")
        true = np.concatenate(true_parts)
        for name in estimators:
            if not est[name]:
                continue
            e = np.concatenate(est[name])
            rows.append(
                TreeFidelityRow(
                    name, label, float(np.mean(sampled)), _corr(e, true), _sign(e, true), int(e.size)
                )
            )
    return rows


def parse_chains(text: str) -> list[tuple[int, int, int]]:
    """Chain samplings from "4x4x1,2x2x1" (roots x interval x width each); a ValueError names the text."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            r, k, m = (int(x) for x in part.split("x"))
        except ValueError:
            raise ValueError(f"chains must be ROOTSxINTERVALxWIDTH, comma-separated, got {text!r}") from None
        if min(r, k, m) < 1:
            raise ValueError(f"chains need roots, interval and width >= 1, got {part!r}")
        out.append((r, k, m))
    return out


def _corr(est: np.ndarray, true: np.ndarray) -> float:
    if est.std() == 0 or true.std() == 0:
        return math.nan
    return float(np.corrcoef(est, true)[0, 1])


def _sign(est: np.ndarray, true: np.ndarray) -> float:
    nz = true != 0
    return float(np.mean(np.sign(est[nz]) == np.sign(true[nz]))) if nz.any() else math.nan


def tree_fidelity_markdown(rows: Sequence[TreeFidelityRow]) -> str:
    """One line per (sampling, estimator): env steps per task, corr, sign."""
    lines = [
        "| sampling | env steps / task | estimator | corr | sign | samples |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        corr = "—" if math.isnan(r.corr) else f"{r.corr:.3f}"
        sign = "—" if math.isnan(r.sign) else f"{r.sign:.3f}"
        lines.append(f"| {r.sampling} | {r.env_steps:.1f} | {r.estimator} | {corr} | {sign} | {r.rows} |")
    return "\n".join(lines)
