"""Synthetic ALFWorld-like rollouts for benchmarking credit estimators without an environment.

Each task has its own small state graph (places in a household with objects on them), so the
trajectories of a group revisit the same observations, as real ALFWorld groups do: that is
what gives anchor-state methods (GiGPO, HGPO, SALT) their groups. About 40% of trajectories
succeed (reward 1 on their last step, at a length uniform in 5..max_steps); the others run to
max_steps and are truncated. About 10% of actions are invalid (the state does not change).
Steps also carry the optional columns other estimators read: a turn reward, a tool-call flag,
a HiPER switch and subgoal. Some observations come in a near-duplicate variant (one object
number differs) for similarity anchors.
"""

from __future__ import annotations

import numpy as np

from agentrl.types import Step, StepBatch, Trajectory

PLACES = [
    "cabinet",
    "countertop",
    "drawer",
    "fridge",
    "microwave",
    "shelf",
    "sinkbasin",
    "stoveburner",
    "table",
    "toaster",
]
OBJECTS = [
    "apple",
    "bowl",
    "bread",
    "cup",
    "egg",
    "knife",
    "lettuce",
    "mug",
    "pan",
    "plate",
    "potato",
    "spoon",
    "tomato",
]
VERBS = ["take", "put", "open", "close", "heat", "cool", "clean", "examine"]
SUBGOALS = ["find the target", "pick it up", "go to the appliance", "use the appliance", "put it in place"]

STATES_PER_TASK = 24
EXITS_PER_STATE = 4
SUCCESS_RATE = 0.4
INVALID_RATE = 0.1
VARIANT_RATE = 0.2
MIN_SUCCESS_STEPS = 5


def _task_graph(rng: np.random.Generator) -> tuple[list[str], list[str], list[list[str]], np.ndarray]:
    """Observation text, a near-duplicate of it, exit actions and exit targets of each state."""
    texts, variants, exits = [], [], []
    for s in range(STATES_PER_TASK):
        place = f"{PLACES[rng.integers(len(PLACES))]} {s + 1}"
        seen = rng.choice(len(OBJECTS), size=3, replace=False)
        numbers = rng.integers(1, 4, size=3)
        things = [f"a {OBJECTS[o]} {k}" for o, k in zip(seen, numbers)]
        text = f"You arrive at {place}. On the {place}, you see {things[0]}, {things[1]}, and {things[2]}."
        things[2] = f"a {OBJECTS[seen[2]]} {numbers[2] % 3 + 1}"
        variant = f"You arrive at {place}. On the {place}, you see {things[0]}, {things[1]}, and {things[2]}."
        texts.append(text)
        variants.append(variant)
        exits.append(
            [
                f"{VERBS[rng.integers(len(VERBS))]} {OBJECTS[seen[e % 3]]} {e + 1}"
                for e in range(EXITS_PER_STATE - 1)
            ]
            + ["go to the next place"]
        )
    targets = rng.integers(STATES_PER_TASK, size=(STATES_PER_TASK, EXITS_PER_STATE))
    return texts, variants, exits, targets


def synthetic_trajectories(P: int, n: int = 8, max_steps: int = 50, seed: int = 0) -> list[Trajectory]:
    """P task groups of n trajectories each, up to max_steps steps, deterministic in seed."""
    if P < 1 or n < 1 or max_steps < 1:
        raise ValueError(f"P, n and max_steps must be >= 1, got P={P}, n={n}, max_steps={max_steps}")
    rng = np.random.default_rng(seed)
    out: list[Trajectory] = []
    for p in range(P):
        texts, variants, exits, targets = _task_graph(rng)
        success = rng.random(n) < SUCCESS_RATE
        lengths = np.where(
            success, rng.integers(min(MIN_SUCCESS_STEPS, max_steps), max_steps + 1, size=n), max_steps
        )
        for i in range(n):
            length = int(lengths[i])
            invalid = rng.random(length) < INVALID_RATE
            exit_choice = rng.integers(EXITS_PER_STATE, size=length)
            use_variant = rng.random(length) < VARIANT_RATE
            turn_reward = rng.random(length)
            tool_call = rng.random(length) < 0.3
            switch = rng.random(length) < 0.2
            subgoal_pick = rng.integers(len(SUBGOALS), size=length)
            steps = []
            state = 0
            subgoal = SUBGOALS[int(subgoal_pick[0])]
            for t in range(length):
                obs = variants[state] if use_variant[t] else texts[state]
                if t == 0 or switch[t]:
                    subgoal = SUBGOALS[int(subgoal_pick[t])]
                if invalid[t]:
                    action = "jump over the counter"
                    next_state = state
                else:
                    action = exits[state][int(exit_choice[t])]
                    next_state = int(targets[state, exit_choice[t]])
                steps.append(
                    Step(
                        obs=obs,
                        action=action,
                        reward=1.0 if success[i] and t == length - 1 else 0.0,
                        valid=not invalid[t],
                        state_key=obs,
                        turn_reward=float(turn_reward[t]),
                        info={
                            "tool_call": bool(tool_call[t]),
                            "switch": "SWITCH" if t == 0 or switch[t] else "KEEP",
                            "subgoal": subgoal,
                        },
                    )
                )
                state = next_state
            out.append(
                Trajectory(
                    task_id=f"task{p}",
                    group_id=f"g{p}",
                    traj_id=f"g{p}/{i}",
                    steps=steps,
                    terminated=bool(success[i]),
                    truncated=not success[i],
                    success=bool(success[i]),
                )
            )
    return out


def synthetic_batch(P: int, n: int = 8, max_steps: int = 50, seed: int = 0) -> StepBatch:
    """The StepBatch of ``synthetic_trajectories(P, n, max_steps, seed)``."""
    return StepBatch.from_trajectories(synthetic_trajectories(P, n, max_steps, seed))


def synthetic_response_ids(
    batch: StepBatch, mean_tokens: int = 30, vocab: int = 4000, seed: int = 0
) -> np.ndarray:
    """A ``response_ids`` column for ``batch`` (object[R] of int64 arrays, mean_tokens/3 to
    5*mean_tokens/3 random ids each), so estimators that read token ids (KTAE) can be timed."""
    rng = np.random.default_rng(seed)
    n = len(batch)
    lengths = rng.integers(mean_tokens // 3, 5 * mean_tokens // 3 + 1, size=n)
    flat = rng.integers(0, vocab, size=int(lengths.sum()))
    out = np.empty(n, dtype=object)
    ends = np.cumsum(lengths)
    for r, (end, m) in enumerate(zip(ends.tolist(), lengths.tolist())):
        out[r] = flat[end - m : end]
    return out
