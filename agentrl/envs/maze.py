"""A deterministic text maze with keys and locked doors, small enough for exact dynamic programming.

Why it exists: credit-assignment methods can be compared against the TRUE values here. The state
is ``(room, frozenset of held keys)``; ``exact_values`` computes V and Q of any policy by backward
induction over (state, t), so an estimator's advantages can be checked against ``advantage``.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from agentrl.envs.base import AgentEnv
from agentrl.types import normalize_action

DIRECTIONS = ("north", "east", "south", "west")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
COLOURS = ("red", "blue", "green", "yellow", "purple")
ROOM_NAMES = ("hall", "kitchen", "library", "cellar", "attic", "study", "pantry", "gallery", "chapel", "armory",
              "garden", "vault", "workshop", "bathroom", "bedroom", "nursery", "office", "parlor", "porch", "stable",
              "storeroom", "tower", "treasury", "laundry", "lounge")
CUSTOM_TASK = "maze-custom"
State = tuple[str, frozenset[str]]
Policy = Callable[[str, list[str]], Sequence[float]]


class Passage(NamedTuple):
    """An undirected passage: going ``direction`` from ``a`` leads to ``b`` (and back the opposite way)."""

    a: str
    direction: str
    b: str
    door: str | None = None  # colour of the key that opens it


@dataclass(frozen=True)
class MazeLayout:
    """Rooms, passages (with optional coloured doors), keys lying in rooms (colour -> room), start, goal."""

    rooms: tuple[str, ...]
    passages: tuple[Passage, ...]
    keys: Mapping[str, str]
    start: str
    goal: str
    exits: Mapping[str, Mapping[str, tuple[str, str | None]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rooms = tuple(self.rooms)
        if not rooms or len(set(rooms)) != len(rooms):
            raise ValueError(f"MazeLayout.rooms must be non-empty and unique, got {rooms!r}")
        exits: dict[str, dict[str, tuple[str, str | None]]] = {r: {} for r in rooms}
        passages = tuple(Passage(*p) for p in self.passages)
        for p in passages:
            if p.a not in exits or p.b not in exits or p.a == p.b:
                raise ValueError(f"passage {p} must join two different known rooms")
            if p.direction not in OPPOSITE:
                raise ValueError(f"passage {p}: direction must be one of {DIRECTIONS}")
            for room, d, other in ((p.a, p.direction, p.b), (p.b, OPPOSITE[p.direction], p.a)):
                if d in exits[room]:
                    raise ValueError(f"passage {p}: room {room!r} already has an exit {d}")
                exits[room][d] = (other, p.door)
        for colour, room in self.keys.items():
            if room not in exits:
                raise ValueError(f"the {colour} key lies in unknown room {room!r}")
        if self.start not in exits or self.goal not in exits or self.start == self.goal:
            raise ValueError(f"start {self.start!r} and goal {self.goal!r} must be two different known rooms")
        if not exits[self.start]:
            raise ValueError(f"the start room {self.start!r} has no exit")
        object.__setattr__(self, "rooms", rooms)
        object.__setattr__(self, "passages", passages)
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        ordered = {r: MappingProxyType({d: e[d] for d in DIRECTIONS if d in e}) for r, e in exits.items()}
        object.__setattr__(self, "exits", MappingProxyType(ordered))

    @property
    def start_state(self) -> State:
        return (self.start, frozenset())


# ----------------------------------------------------------------------------- dynamics


def admissible(layout: MazeLayout, state: State) -> list[str]:
    """Actions of a state (a new list): every exit, then every key lying here; none at the goal."""
    room, held = state
    if room == layout.goal:
        return []
    keys_here = sorted(c for c, r in layout.keys.items() if r == room and c not in held)
    return [f"go {d}" for d in layout.exits[room]] + [f"take {c} key" for c in keys_here]


def describe(layout: MazeLayout, state: State) -> str:
    """The canonical description of a state; it is ``info["state_key"]``."""
    room, held = state
    exits = [d if door is None else f"{d} ({door} door)" for d, (_, door) in layout.exits[room].items()]
    here = sorted(c for c, r in layout.keys.items() if r == room and c not in held)
    return "\n".join([
        f"Your task is to reach the {layout.goal}.",
        f"You are in the {room}.",
        "Exits: " + (", ".join(exits) or "none") + ".",
        "You see: " + (", ".join(f"{c} key" for c in here) or "no keys") + ".",
        "You carry: " + (", ".join(f"{c} key" for c in sorted(held)) or "nothing") + ".",
    ])


def outcomes(layout: MazeLayout, state: State, action: str, slip: float) -> list[tuple[float, State, str]]:
    """``(probability, next state, feedback)`` of an admissible action; reward is 1 on entering the goal."""
    room, held = state
    if action.startswith("take "):
        colour = action[len("take ") : -len(" key")]
        return [(1.0, (room, held | {colour}), f"You take the {colour} key.")]
    direction = action[len("go ") :]
    dest, door = layout.exits[room][direction]
    if door is not None and door not in held:
        return [(1.0, state, f"The {door} door is locked.")]
    moved = f"You go {direction}." + (" You have reached your goal!" if dest == layout.goal else "")
    out = [(1.0 - slip, (dest, held), moved)]
    return out + [(slip, state, "You slip and stay where you are.")] if slip > 0 else out


def reward_of(layout: MazeLayout, next_state: State) -> float:
    return 1.0 if next_state[0] == layout.goal else 0.0


def solve(layout: MazeLayout, start: State | None = None) -> list[str] | None:
    """A shortest action list from ``start`` (default: the layout's start) to the goal (BFS over
    states, no slips), or None when unsolvable."""
    start = layout.start_state if start is None else start
    parent: dict[State, tuple[State, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if state[0] == layout.goal:
            plan: list[str] = []
            while (link := parent[state]) is not None:
                state, action = link
                plan.append(action)
            return plan[::-1]
        for action in admissible(layout, state):
            nxt = outcomes(layout, state, action, 0.0)[0][1]
            if nxt not in parent:
                parent[nxt] = (state, action)
                queue.append(nxt)
    return None


# ----------------------------------------------------------------------------- generator


Cell = tuple[int, int]


def _bfs(start: Cell, edges: set[frozenset]) -> dict[Cell, Cell | None]:
    """BFS parents over an undirected edge set: its keys are the component of ``start``."""
    parent: dict[Cell, Cell | None] = {start: None}
    queue = deque([start])
    while queue:
        x = queue.popleft()
        for y in sorted(next(iter(e - {x})) for e in edges if x in e):
            if y not in parent:
                parent[y] = x
                queue.append(y)
    return parent


def _tree_path(tree: set[frozenset], u: Cell, v: Cell) -> list[frozenset]:
    parent, path = _bfs(u, tree), []
    while (p := parent[v]) is not None:
        path.append(frozenset((p, v)))
        v = p
    return path[::-1]


@lru_cache(maxsize=4096)
def generate_layout(task_seed: int, size: int = 3, n_doors: int = 1, colours: int = len(COLOURS)) -> MazeLayout:
    """A solvable size x size maze, deterministic by seed: random spanning tree + size-1 extra edges.

    Doors sit on tree edges of the start-goal path that no extra edge bypasses, so each door must
    be opened; key i lies between door i-1 and door i, reachable without its own door. Door colours
    are drawn from the first ``colours`` of ``COLOURS`` (with 1, every key is red: an agent need not
    copy a colour it read, which a tiny random-init model cannot learn on a CPU budget).
    """
    if not 2 <= size <= 5:
        raise ValueError(f"size must be in 2..5 (there are {len(ROOM_NAMES)} room names), got {size}")
    if not 1 <= colours <= len(COLOURS):
        raise ValueError(f"colours must be in 1..{len(COLOURS)}, got {colours}")
    if not 0 <= n_doors <= min(size - 1, colours):
        raise ValueError(f"n_doors must be in 0..{min(size - 1, colours)} for size {size} and {colours} colour(s), got {n_doors}")
    rng = random.Random(task_seed)
    cells = [(r, c) for r in range(size) for c in range(size)]
    grid = [frozenset((a, b)) for a in cells for b in ((a[0] + 1, a[1]), (a[0], a[1] + 1)) if b in cells]
    rng.shuffle(grid)
    root = {c: c for c in cells}

    def find(c: Cell) -> Cell:
        while root[c] != c:
            c = root[c]
        return c

    tree: set[frozenset] = set()
    for e in grid:  # Kruskal on shuffled edges = random spanning tree
        a, b = (find(c) for c in sorted(e))
        if a != b:
            root[a] = b
            tree.add(e)
    start = rng.choice(cells)
    dist = {c: len(_tree_path(tree, start, c)) for c in cells}
    goal = rng.choice(sorted(c for c in cells if dist[c] == max(dist.values())))
    path = _tree_path(tree, start, goal)
    doors = [path[i] for i in sorted(rng.sample(range(len(path)), n_doors))]
    bypass_free = [e for e in grid if e not in tree and not set(_tree_path(tree, *sorted(e))) & set(doors)]
    edges = tree | set(rng.sample(bypass_free, min(size - 1, len(bypass_free))))
    door_colours = rng.sample(COLOURS[:colours], n_doors)
    keys, before = {}, set()
    for i, colour in enumerate(door_colours):
        reach = set(_bfs(start, edges - set(doors[i:])))
        region = sorted(reach - before - {start}) or [start]
        keys[colour] = rng.choice(region)
        before = reach
    names = dict(zip(cells, rng.sample(ROOM_NAMES, len(cells))))
    passages = []
    for e in sorted(edges, key=sorted):
        a, b = sorted(e)
        door = door_colours[doors.index(e)] if e in doors else None
        passages.append(Passage(names[a], "south" if b[0] > a[0] else "east", names[b], door))
    layout = MazeLayout(
        rooms=tuple(names[c] for c in cells), passages=tuple(passages),
        keys={c: names[r] for c, r in keys.items()}, start=names[start], goal=names[goal],
    )
    assert solve(layout) is not None, f"generated maze {task_seed} is unsolvable"
    return layout


# ----------------------------------------------------------------------------- exact values


@dataclass(frozen=True, eq=False)
class ExactValues:
    """V and Q of one policy for every reachable state and every t in 0..max_steps (V = 0 at max_steps)."""

    states: tuple[State, ...]
    state_keys: tuple[str, ...]
    actions: tuple[tuple[str, ...], ...]
    probs_SA: np.ndarray  # policy probabilities per state and admissible-action slot
    v_TS: np.ndarray  # (max_steps + 1, S)
    q_TSA: np.ndarray  # (max_steps, S, A_max), nan where a state has fewer actions
    gamma: float
    invalid_penalty: float
    index: Mapping[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {k: i for i, k in enumerate(self.state_keys)})

    @property
    def max_steps(self) -> int:
        return self.v_TS.shape[0] - 1

    def _s(self, state_key: str) -> int:
        if state_key not in self.index:
            raise KeyError(f"state is not reachable from the start of this maze: {state_key!r}")
        return self.index[state_key]

    def v(self, state_key: str, t: int) -> float:
        if not 0 <= t <= self.max_steps:
            raise ValueError(f"t must be in 0..{self.max_steps}, got {t}")
        return float(self.v_TS[t, self._s(state_key)])

    def q(self, state_key: str, t: int, action: str) -> float:
        """Q of taking ``action`` at step t; a non-admissible action is a no-op (-invalid_penalty, stay)."""
        if not 0 <= t < self.max_steps:
            raise ValueError(f"t must be in 0..{self.max_steps - 1} to act, got {t}")
        s = self._s(state_key)
        if not self.actions[s]:  # the goal: the episode is over
            return 0.0
        normal = [normalize_action(a) for a in self.actions[s]]
        act = normalize_action(action)
        if act in normal:
            return float(self.q_TSA[t, s, normal.index(act)])
        return -self.invalid_penalty + self.gamma * float(self.v_TS[t + 1, s])

    def advantage(self, state_key: str, t: int, action: str) -> float:
        return self.q(state_key, t, action) - self.v(state_key, t)


def exact_values(
    layout: MazeLayout,
    policy: Policy | None = None,
    gamma: float = 0.95,
    max_steps: int = 20,
    slip: float = 0.0,
    invalid_penalty: float = 0.0,
) -> ExactValues:
    """Backward induction over (state, t), t = max_steps-1..0, for ``policy`` (None = uniform)."""
    _check_settings(slip=slip, max_steps=max_steps, invalid_penalty=invalid_penalty)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    index: dict[State, int] = {layout.start_state: 0}
    queue, rows = deque([layout.start_state]), []  # rows: (s, slot, prob, s', reward)
    while queue:
        state = queue.popleft()
        for slot, action in enumerate(admissible(layout, state)):
            for prob, nxt, _ in outcomes(layout, state, action, slip):
                if nxt not in index:
                    index[nxt] = len(index)
                    queue.append(nxt)
                rows.append((index[state], slot, prob, index[nxt], reward_of(layout, nxt)))
    states = tuple(index)
    keys = tuple(describe(layout, s) for s in states)
    actions = tuple(tuple(admissible(layout, s)) for s in states)
    probs_SA = np.zeros((len(states), max(map(len, actions))))
    for i, (key, acts) in enumerate(zip(keys, actions)):
        if acts:
            probs_SA[i, : len(acts)] = _policy_probs(policy, key, list(acts))
    src, slot, prob, dst, reward = (np.array(col) for col in zip(*rows))
    mask_SA = np.arange(probs_SA.shape[1]) < np.array([len(a) for a in actions])[:, None]
    v_TS = np.zeros((max_steps + 1, len(states)))
    q_TSA = np.full((max_steps, *probs_SA.shape), np.nan)
    for t in range(max_steps - 1, -1, -1):
        q_SA = np.zeros(probs_SA.shape)
        np.add.at(q_SA, (src, slot), prob * (reward + gamma * v_TS[t + 1, dst]))
        q_TSA[t][mask_SA] = q_SA[mask_SA]
        v_TS[t] = (probs_SA * q_SA).sum(axis=1)
    return ExactValues(states, keys, actions, probs_SA, v_TS, q_TSA, float(gamma), float(invalid_penalty))


def _policy_probs(policy: Policy | None, key: str, acts: list[str]) -> np.ndarray:
    if policy is None:
        return np.full(len(acts), 1.0 / len(acts))
    p = np.asarray(policy(key, acts), dtype=float)
    if p.shape != (len(acts),) or (p < 0).any() or abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"policy must return {len(acts)} non-negative probabilities summing to 1 for {acts}, got {p}")
    return p


def _check_settings(*, slip: float, max_steps: int, invalid_penalty: float) -> None:
    if not 0.0 <= slip < 1.0:
        raise ValueError(f"slip must be in [0, 1), got {slip}")
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if not np.isfinite(invalid_penalty):
        raise ValueError(f"invalid_penalty must be finite, got {invalid_penalty}")


# ----------------------------------------------------------------------------- env


class MazeEnv(AgentEnv):
    """``make("maze")``: reach the goal room, opening coloured doors with keys picked up on the way."""

    def __init__(self, size: int = 3, n_doors: int = 1, slip: float = 0.0, max_steps: int = 20, num_tasks: int = 100,
                 layout: MazeLayout | None = None, invalid_penalty: float = 0.0, expert: bool = False,
                 render_mode: str | None = None, colours: int = len(COLOURS)) -> None:
        super().__init__(render_mode=render_mode)
        self.expert = expert  # adds info["expert_action"]: the first action of a shortest plan from here
        _check_settings(slip=slip, max_steps=max_steps, invalid_penalty=invalid_penalty)
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if layout is None:
            generate_layout(0, size, n_doors, colours)  # validates size, n_doors, colours now, not at the first reset
        self.size, self.n_doors, self.colours, self.slip, self.max_steps = size, n_doors, colours, slip, max_steps
        self.num_tasks, self.custom_layout, self.invalid_penalty = num_tasks, layout, invalid_penalty
        self.layout: MazeLayout | None = None
        self.state: State | None = None
        self.task_id = ""
        self._t = 0
        self._done = False

    def task_ids(self) -> list[str]:
        return [CUSTOM_TASK] if self.custom_layout is not None else [f"maze-{i}" for i in range(self.num_tasks)]

    def layout_for(self, task_id: str) -> MazeLayout:
        """The layout a task id plays ("maze-<n>" -> generate_layout(n, size, n_doors, colours))."""
        if self.custom_layout is not None:
            if task_id != CUSTOM_TASK:
                raise ValueError(f"this env plays a given layout; its only task id is {CUSTOM_TASK!r}, got {task_id!r}")
            return self.custom_layout
        match = re.fullmatch(r"maze-(\d+)", str(task_id))
        if match is None:
            raise ValueError(f"maze task ids look like 'maze-<n>', got {task_id!r}")
        return generate_layout(int(match.group(1)), self.size, self.n_doors, self.colours)

    def exact_values(self, task_id: str, policy: Policy | None = None, gamma: float = 0.95) -> ExactValues:
        """True V/Q of ``policy`` on a task, with this env's max_steps, slip and invalid_penalty."""
        return exact_values(self.layout_for(task_id), policy, gamma, self.max_steps, self.slip, self.invalid_penalty)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task_id = (options or {}).get("task_id")
        if task_id is None:
            ids = self.task_ids()
            task_id = ids[int(self.np_random.integers(len(ids)))]
        self.layout, self.task_id = self.layout_for(task_id), task_id
        self.state, self._t, self._done = self.layout.start_state, 0, False
        self._last_obs = describe(self.layout, self.state)
        return self._last_obs, self._info(valid=True)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.layout is None or self.state is None or self._done:
            raise RuntimeError("the episode is over or not started: call reset() before step()")
        acts = {normalize_action(a): a for a in admissible(self.layout, self.state)}
        chosen = acts.get(normalize_action(action)) if isinstance(action, str) else None
        if chosen is None:
            reward, feedback = -self.invalid_penalty, "Nothing happens."
        else:
            results = outcomes(self.layout, self.state, chosen, self.slip)
            pick = 0 if len(results) == 1 else int(self.np_random.random() < self.slip)
            _, nxt, feedback = results[pick]
            reward, self.state = reward_of(self.layout, nxt), nxt
        self._t += 1
        terminated = self.state[0] == self.layout.goal
        truncated = not terminated and self._t >= self.max_steps
        self._done = terminated or truncated
        self._last_obs = feedback + "\n" + describe(self.layout, self.state)
        return self._last_obs, float(reward), terminated, truncated, self._info(valid=chosen is not None)

    def _info(self, valid: bool) -> dict[str, Any]:
        assert self.layout is not None and self.state is not None
        won = self.state[0] == self.layout.goal
        info = {"state_key": describe(self.layout, self.state), "admissible_actions": admissible(self.layout, self.state),
                "valid": valid, "success": won, "won": won, "task_id": self.task_id}
        if self.expert and not won:
            plan = solve(self.layout, self.state)
            info["expert_action"] = plan[0] if plan else None
        return info
