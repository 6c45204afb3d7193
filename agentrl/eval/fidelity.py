"""Credit fidelity: how close each estimator's step advantages come to the TRUE advantages.

On the built-in maze the rollout policy is a fixed table over admissible actions, so its exact
Q and V follow by dynamic programming (``agentrl.envs.maze.exact_values``) and every visited step
has a true advantage A = Q_t(s, a) - V_t(s). Groups of N trajectories are sampled per task, every
registered estimator scores them, and we report per estimator and group size:

- ``corr``: Pearson correlation between estimated and true advantages over all rows;
- ``sign``: share of rows with a non-zero true advantage whose estimate has the same sign;
- ``noise``: variance of the estimate for the same (task, state, t, action) across independently
  resampled groups, in units of the estimator's overall variance (0 = perfectly repeatable); for
  the ``outcome+turn`` target the state includes the milestones reached (``progress_key``).

Targets. The maze runs with ``turn_rewards`` and ``subgoals`` on (``agentrl.envs.maze.MazeEnv``):
each step also carries a verifiable turn reward (a key, a locked door or a room reached for the
first time) and the planner's HiPER tags (``switch``/``subgoal``), so every registered estimator
runs except those that count tool calls (HDPO: the maze has none; listed as skipped). Each is compared with the exact advantage of the return it estimates (column ``target``):

- ``outcome+turn``: estimators that read turn rewards (those declaring the ``turn_reward`` field:
  MT-GRPO, MT-PPO) against Q - V of outcome + turn rewards (``exact_values(turn_weight=1)``, over
  states extended by the milestones reached, ``info["progress_key"]``);
- ``outcome``: all others (HiPER included: its rewards are the env's, the outcome) against Q - V
  of the outcome alone.

Critic-based estimators get the exact V of their target as critic (an oracle critic, labelled as
such; HiPER gets it for all three heads, V_H = V_L = V_T = V). Options set so that an estimator
estimates that target (``FAIR_OPTIONS``, named in the note): MT-GRPO runs its K-turn variant (the
two-phase one needs tool calls, which the maze has none of); HiPER runs without reward shaping
(its KEEP/invalid penalties are not part of the return) and without bootstrapping truncated
episodes (the exact values are finite-horizon: V = 0 after the last step). An estimator that still
needs an input the maze cannot give is listed as skipped with the reason.

Token-level estimators (registered ``per_token``, e.g. KTAE) see each step's response as its action's
words, one token id per word (``action_token_ids``), and are scored by the mean of a row's token
advantages. Estimators that read the learner's token statistics (``token_stats``, e.g. UCAS) are
skipped: the maze's table policy has no logits.

SPA-RL's progress head gets its ideal instead of V (``ORACLE_HEADS``): the TD error of the exact V,
c_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last step), whose discounted sum from t is the
return minus V_t, and a zero critic (the expected remaining sum of c); grounding off.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from agentrl.credit import Advantages, MissingInputError, available_estimators, estimate, estimator_info
from agentrl.credit.ops import layout, next_in_traj
from agentrl.envs.maze import ExactValues, MazeEnv
from agentrl.types import Step, StepBatch, Trajectory, stable_hash

TablePolicy = Callable[[str, list[str]], Sequence[float]]
OUTCOME, OUTCOME_TURN = "outcome", "outcome+turn"
FAIR_OPTIONS: dict[str, dict[str, object]] = {
    "mt_grpo": {"variant": "k_turn"},  # two_phase needs tool calls; the maze has none
    "hiper": {"shaping": False, "bootstrap_truncated": False},  # the return is the outcome; finite horizon
    "matchtir": {"outcome_weight": 1.0},  # its answer turn scores the outcome; the maze's is the episode's
    "spa_rl": {"grounding": 0.0, "whiten": False},  # the return is the outcome; advantages unscaled
    # the critic's own A = G - V: training whitens it over each batch (an affine map per batch), which
    # would make the sign read "better than this batch's mean" rather than the estimate's own
    "gae": {"whiten": False},
    "mt_ppo": {"whiten": False},
}


def ideal_progress(batch: StepBatch, true_value: np.ndarray, gamma: float) -> dict[str, np.ndarray]:
    """SPA-RL's heads if its progress head were perfect: c_t = r_t + gamma V_{t+1} - V_t under the
    exact V (0 after a trajectory's last row), and the critic of the shaped return, 0."""
    lay = layout(batch)
    progress = batch.reward + gamma * next_in_traj(lay, true_value) - true_value
    return {"value": np.zeros(len(batch)), "progress": progress}


ORACLE_HEADS: dict[str, Callable[[StepBatch, np.ndarray, float], dict[str, np.ndarray]]] = {
    "spa_rl": ideal_progress
}


def action_token_ids(action: str) -> list[int]:
    """The action's words as token ids (a stable hash per word): what token-level estimators read."""
    return [stable_hash(w) % 2**20 for w in action.split()]


def row_credit(name: str, adv: Advantages) -> np.ndarray:
    """One advantage per row: ``step``, or for a per-token estimator the mean over the row's tokens."""
    if not estimator_info(name).per_token or adv.token is None:
        return adv.step
    return np.array([float(a.mean()) if len(a) else s for a, s in zip(adv.token, adv.step)])


@dataclass(frozen=True)
class FidelityRow:
    estimator: str
    group_size: int
    corr: float
    sign: float
    noise: float
    rows: int
    note: str = ""
    target: str = OUTCOME  # which exact advantage: "outcome" or "outcome+turn" (see the module doc)

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


def target_of(name: str) -> str:
    """The return an estimator estimates: outcome + turn rewards when it reads them, else the outcome."""
    return OUTCOME_TURN if "turn_reward" in estimator_info(name).fields else OUTCOME


def sample_group(
    env: MazeEnv,
    task_id: str,
    group_id: str,
    n: int,
    policy: TablePolicy,
    values: ExactValues,
    env_seed: int,
    rng: np.random.Generator,
    turn_values: ExactValues | None = None,
) -> list[Trajectory]:
    """N trajectories from one identical initial state; each step's info holds its true A and V of
    the outcome (``true_advantage``, ``true_value``) and, with ``turn_values`` (an env with
    ``turn_rewards``), of outcome + turn rewards (``true_advantage_turn``, ``true_value_turn``,
    looked up by ``info["progress_key"]``), plus the env's HiPER tags for that turn when it emits them."""
    trajs = []
    for i in range(n):
        obs, info = env.reset(seed=env_seed, options={"task_id": task_id})
        steps: list[Step] = []
        terminated = truncated = False
        while not (terminated or truncated):
            key, actions, t = info["state_key"], info["admissible_actions"], len(steps)
            action = actions[int(rng.choice(len(actions), p=np.asarray(policy(key, actions))))]
            truth: dict[str, object] = {
                "true_advantage": values.advantage(key, t, action),
                "true_value": values.v(key, t),
            }
            if turn_values is not None:
                progress = info["progress_key"]
                truth["true_advantage_turn"] = turn_values.advantage(progress, t, action)
                truth["true_value_turn"] = turn_values.v(progress, t)
                truth["progress_key"] = progress
            truth.update({tag: info[tag] for tag in ("switch", "subgoal") if tag in info})
            obs_next, reward, terminated, truncated, info = env.step(action)
            turn_reward = info.get("turn_reward")
            steps.append(
                Step(
                    obs=obs,
                    action=action,
                    reward=float(reward),
                    valid=bool(info["valid"]),
                    state_key=key,
                    turn_reward=None if turn_reward is None else float(turn_reward),
                    response_ids=action_token_ids(action),
                    info=truth,
                )
            )
            obs = obs_next
        trajs.append(
            Trajectory(
                task_id,
                group_id,
                f"{group_id}/{i}",
                steps,
                terminated=terminated,
                truncated=truncated,
                success=bool(info["success"]),
            )
        )
    return trajs


def _inputs(name: str, true_value: np.ndarray, gamma: float, batch: StepBatch) -> dict[str, object]:
    """Options and caller inputs: gamma, ``FAIR_OPTIONS`` and the oracle critic (every HiPER head;
    SPA-RL's from ``ORACLE_HEADS``)."""
    info = estimator_info(name)
    cfg: dict[str, object] = dict(FAIR_OPTIONS.get(name, {}))
    if "gamma" in info.options:
        cfg["gamma"] = gamma
    for key in info.inputs:
        if key != "values":
            raise MissingInputError(f"needs input {key!r}")
        if name in ORACLE_HEADS:
            cfg["values"] = ORACLE_HEADS[name](batch, true_value, gamma)
            continue
        cfg["values"] = info.critic_input(
            dict.fromkeys(info.value_heads, true_value)
        )  # the oracle on every head
    return cfg


def _note(name: str) -> str:
    if name in ORACLE_HEADS:
        parts = ["ideal progress head: TD error of the exact V (oracle)"]
    else:
        parts = ["exact V as critic (oracle)"] if "values" in estimator_info(name).inputs else []
    parts += [f"{k}={v}" for k, v in FAIR_OPTIONS.get(name, {}).items()]
    return "; ".join(parts)


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
    env = MazeEnv(
        size=size, n_doors=n_doors, slip=slip, max_steps=max_steps, turn_rewards=True, subgoals=True
    )
    task_ids = list(env.task_ids())[:tasks]
    policies = {tid: improved_policy(env, tid, gamma) for tid in task_ids}
    truths = {tid: env.exact_values(tid, policies[tid], gamma) for tid in task_ids}
    turn_truths = {tid: env.exact_values(tid, policies[tid], gamma, turn_weight=1.0) for tid in task_ids}
    names = list(estimators or available_estimators())
    targets = {name: target_of(name) for name in names}
    rng = np.random.default_rng(seed)
    rows: list[FidelityRow] = []
    for n in group_sizes:
        est_by_name: dict[str, list[np.ndarray]] = defaultdict(list)
        true_parts: dict[str, list[np.ndarray]] = {OUTCOME: [], OUTCOME_TURN: []}
        keys_parts: dict[str, list[list[tuple]]] = {OUTCOME: [], OUTCOME_TURN: []}
        skipped: dict[str, str] = {}
        for r in range(resamples):
            trajs = []
            for tid in task_ids:
                trajs += sample_group(
                    env,
                    tid,
                    f"{tid}/r{r}",
                    n,
                    policies[tid],
                    truths[tid],
                    env_seed=seed * 7919 + r,
                    rng=rng,
                    turn_values=turn_truths[tid],
                )
            batch = StepBatch.from_trajectories(trajs)
            steps = [s for t in trajs if t.steps for s in t.steps]
            true_value = {
                OUTCOME: np.array([s.info["true_value"] for s in steps]),
                OUTCOME_TURN: np.array([s.info["true_value_turn"] for s in steps]),
            }
            true_parts[OUTCOME].append(np.array([s.info["true_advantage"] for s in steps]))
            true_parts[OUTCOME_TURN].append(np.array([s.info["true_advantage_turn"] for s in steps]))
            keys_parts[OUTCOME].append(
                [(t.task_id, s.state_key, k, s.action) for t in trajs for k, s in enumerate(t.steps)]
            )
            keys_parts[OUTCOME_TURN].append(
                [
                    (t.task_id, s.info["progress_key"], k, s.action)
                    for t in trajs
                    for k, s in enumerate(t.steps)
                ]
            )
            for name in names:
                if name in skipped:
                    continue
                try:
                    cfg = _inputs(name, true_value[targets[name]], gamma, batch)
                    est_by_name[name].append(row_credit(name, estimate(name, batch, **cfg)))
                except MissingInputError as e:
                    skipped[name] = str(e)
        if progress:
            progress(f"group size {n}: {resamples} resamples x {len(task_ids)} tasks sampled")
        true_all = {target: np.concatenate(parts) for target, parts in true_parts.items()}
        key_ids = {
            target: _key_ids([k for part in parts for k in part]) for target, parts in keys_parts.items()
        }
        resample_of = np.concatenate([np.full(len(p), r) for r, p in enumerate(true_parts[OUTCOME])])
        for name in names:
            target = targets[name]
            if name in skipped:
                rows.append(
                    FidelityRow(
                        name,
                        n,
                        math.nan,
                        math.nan,
                        math.nan,
                        0,
                        note=f"skipped: {skipped[name]}",
                        target=target,
                    )
                )
                continue
            est_all = np.concatenate(est_by_name[name])
            true = true_all[target]
            rows.append(
                FidelityRow(
                    name,
                    n,
                    _corr(est_all, true),
                    _sign(est_all, true),
                    _noise(est_all, key_ids[target], resample_of),
                    int(est_all.size),
                    _note(name),
                    target,
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


def _key_ids(keys: Sequence[Hashable]) -> np.ndarray:
    """int64[R]: one id per distinct key, in order of first appearance."""
    ids: dict[Hashable, int] = {}
    return np.fromiter((ids.setdefault(k, len(ids)) for k in keys), np.int64, len(keys))


def _noise(est: np.ndarray, keys: Sequence[Hashable] | np.ndarray, resample_of: np.ndarray) -> float:
    """Mean across-resample variance of the per-resample mean estimate of each key, over the
    estimator's overall variance; keys seen in fewer than two resamples are left out.
    ``keys``: one hashable per row, or their ``_key_ids`` (computed once for all estimators)."""
    scale = est.var()
    if scale == 0:
        return 0.0
    key_R = keys if isinstance(keys, np.ndarray) else _key_ids(keys)
    n_resamples = int(resample_of.max()) + 1
    cells_C, cell_R = np.unique(key_R * n_resamples + resample_of.astype(np.int64), return_inverse=True)
    mean_C = np.bincount(cell_R, weights=est) / np.bincount(cell_R)
    _, key_C = np.unique(cells_C // n_resamples, return_inverse=True)
    n_K = np.bincount(key_C)
    mean_K = np.bincount(key_C, weights=mean_C) / n_K
    ss_K = np.bincount(key_C, weights=(mean_C - mean_K[key_C]) ** 2)
    repeated_K = n_K >= 2
    if not repeated_K.any():
        return math.nan
    return float(np.mean(ss_K[repeated_K] / (n_K[repeated_K] - 1)) / scale)


def fidelity_markdown(rows: Sequence[FidelityRow]) -> str:
    """A Markdown table: one line per estimator, one column group per group size."""
    sizes = sorted({r.group_size for r in rows})
    by = {(r.estimator, r.group_size): r for r in rows}
    head = (
        "| estimator | target | "
        + " | ".join(f"corr N={n} | sign N={n} | noise N={n}" for n in sizes)
        + " | note |"
    )
    sep = "|" + "---|" * (2 + 3 * len(sizes) + 1)
    lines = [head, sep]
    for name in sorted({r.estimator for r in rows}):
        cells = []
        for n in sizes:
            r = by[(name, n)]
            cells += [_fmt(r.corr), _fmt(r.sign), _fmt(r.noise)]
        first = by[(name, sizes[0])]
        lines.append(f"| {name} | {first.target} | " + " | ".join(cells) + f" | {first.note} |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"
