"""A deterministic text maze with keys and locked doors, small enough for exact dynamic programming.

Why it exists: credit-assignment methods can be compared against the TRUE values here. The state
is ``(room, frozenset of held keys)``; ``exact_values`` computes V and Q of any policy by backward
induction over (state, t), so an estimator's advantages can be checked against ``advantage``.

Opt-in extras so turn-level methods (MT-GRPO, MT-PPO, HiPER) can be checked too: ``MazeEnv(turn_rewards=True)``
emits a verifiable per-step ``info["turn_reward"]`` (``advance``: a milestone reached for the first
time in the episode) and ``MazeEnv(subgoals=True)`` the planner's HiPER tags ``info["subgoal"]`` /
``info["switch"]`` (``subgoal_of``). ``exact_values(..., turn_weight=w)`` gives the exact values of
outcome + w * turn reward, over states extended by the milestones reached (``Progress``).
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
ROOM_NAMES = (
    "hall",
    "kitchen",
    "library",
    "cellar",
    "attic",
    "study",
    "pantry",
    "gallery",
    "chapel",
    "armory",
    "garden",
    "vault",
    "workshop",
    "bathroom",
    "bedroom",
    "nursery",
    "office",
    "parlor",
    "porch",
    "stable",
    "storeroom",
    "tower",
    "treasury",
    "laundry",
    "lounge",
)
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt from its fields (the read-only mappings do not pickle): env snapshots cross processes."""
        return (MazeLayout, (self.rooms, self.passages, dict(self.keys), self.start, self.goal))

    def __deepcopy__(self, memo: dict[int, Any]) -> MazeLayout:
        return self  # immutable

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
    return "\n".join(
        [
            f"Your task is to reach the {layout.goal}.",
            f"You are in the {room}.",
            "Exits: " + (", ".join(exits) or "none") + ".",
            "You see: " + (", ".join(f"{c} key" for c in here) or "no keys") + ".",
            "You carry: " + (", ".join(f"{c} key" for c in sorted(held)) or "nothing") + ".",
        ]
    )


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


# ----------------------------------------------------------------------------- turn rewards and subgoals


class Progress(NamedTuple):
    """A state plus the milestones reached so far in the episode: what the turn reward depends on."""

    room: str
    held: frozenset[str]
    visited: frozenset[str]  # rooms entered so far, the start room included
    doors: frozenset[int]  # indices into ``layout.passages`` of the locked doors passed so far

    @property
    def state(self) -> State:
        return (self.room, self.held)


def start_progress(layout: MazeLayout) -> Progress:
    return Progress(layout.start, frozenset(), frozenset({layout.start}), frozenset())


def door_index(layout: MazeLayout) -> dict[tuple[str, str], int]:
    """``(room, direction) -> passage index`` for every exit through a door (both sides)."""
    out: dict[tuple[str, str], int] = {}
    for i, p in enumerate(layout.passages):
        if p.door is not None:
            out[(p.a, p.direction)] = i
            out[(p.b, OPPOSITE[p.direction])] = i
    return out


def advance(
    layout: MazeLayout,
    progress: Progress,
    action: str | None,
    next_state: State,
    doors: Mapping[tuple[str, str], int] | None = None,
) -> tuple[Progress, float]:
    """The milestones after a step from ``progress`` and the step's turn reward.

    The turn reward is 1.0 when the step reached at least one milestone for the first time in the
    episode, else 0.0: it took a key, passed through a locked door (a passage, either way) it had
    not passed before, or entered a room not visited before (the start room counts as visited; the
    goal is always new, so the winning step earns 1.0). A step reaching several milestones at once
    (a new door into a new room) still earns 1.0. Slips, locked doors, invalid actions (``action``
    None) and revisits earn 0.0. Each milestone pays once, so an episode earns at most
    keys + doors + rooms - 1. ``doors``: ``door_index(layout)``, passed in to skip recomputing it.
    """
    room, held = next_state
    took_key = len(held) > len(progress.held)
    visited = progress.visited | {room}
    new_room = room not in progress.visited
    passed = progress.doors
    if action is not None and action.startswith("go ") and room != progress.room:
        door = (door_index(layout) if doors is None else doors).get((progress.room, action[len("go ") :]))
        if door is not None:
            passed = passed | {door}
    reward = 1.0 if took_key or new_room or passed != progress.doors else 0.0
    return Progress(room, held, visited, passed), reward


def progress_key(layout: MazeLayout, progress: Progress) -> str:
    """The canonical description of a ``Progress``: the state's ``describe`` plus its milestones;
    it is ``info["progress_key"]`` and the key of ``exact_values(..., turn_weight=w)``."""
    visited = [r for r in layout.rooms if r in progress.visited]
    doors = [f"{p.door} ({p.a}-{p.b})" for i, p in enumerate(layout.passages) if i in progress.doors]
    return "\n".join(
        [
            describe(layout, progress.state),
            "Visited: " + ", ".join(visited) + ".",
            "Doors passed: " + (", ".join(doors) or "none") + ".",
        ]
    )


def subgoal_of(layout: MazeLayout, state: State) -> str:
    """The current subgoal of the planner (``solve``, a shortest plan from ``state``): the plan's
    first key or locked door, "take the <colour> key" / "open the <colour> door", else (none left,
    at the goal, or no plan) "reach the <goal>". A function of the state alone."""
    for action in solve(layout, state) or []:
        if action.startswith("take "):
            return f"take the {action[len('take ') : -len(' key')]} key"
        dest, door = layout.exits[state[0]][action[len("go ") :]]
        if door is not None:
            return f"open the {door} door"
        state = (dest, state[1])
    return f"reach the {layout.goal}"


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
def generate_layout(
    task_seed: int, size: int = 3, n_doors: int = 1, colours: int = len(COLOURS)
) -> MazeLayout:
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
        raise ValueError(
            f"n_doors must be in 0..{min(size - 1, colours)} for size {size} and {colours} colour(s), got {n_doors}"
        )
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
    keys: dict[str, Cell] = {}
    before: set[Cell] = set()
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
        rooms=tuple(names[c] for c in cells),
        passages=tuple(passages),
        keys={c: names[r] for c, r in keys.items()},
        start=names[start],
        goal=names[goal],
    )
    assert solve(layout) is not None, f"generated maze {task_seed} is unsolvable"
    return layout


# ----------------------------------------------------------------------------- exact values


@dataclass(frozen=True, eq=False)
class ExactValues:
    """V and Q of one policy for every reachable state and every t in 0..max_steps (V = 0 at max_steps).

    With ``turn_weight`` != 0 the states are ``Progress`` (keys: ``progress_key``) and V, Q are nan
    at the steps t before a state can first be reached (``v``/``q`` raise there).
    """

    states: tuple[State | Progress, ...]
    state_keys: tuple[str, ...]
    actions: tuple[tuple[str, ...], ...]
    probs_SA: np.ndarray  # policy probabilities per state and admissible-action slot
    v_TS: np.ndarray  # (max_steps + 1, S)
    q_TSA: np.ndarray  # (max_steps, S, A_max), nan where a state has fewer actions
    gamma: float
    invalid_penalty: float
    turn_weight: float = 0.0  # the return is outcome + turn_weight * turn rewards
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

    def _value(self, x: float, state_key: str, t: int) -> float:
        if np.isnan(x):
            raise KeyError(f"state cannot be reached by step {t}: {state_key!r}")
        return float(x)

    def v(self, state_key: str, t: int) -> float:
        if not 0 <= t <= self.max_steps:
            raise ValueError(f"t must be in 0..{self.max_steps}, got {t}")
        return self._value(self.v_TS[t, self._s(state_key)], state_key, t)

    def q(self, state_key: str, t: int, action: str) -> float:
        """Q of taking ``action`` at step t; a non-admissible action is a no-op (-invalid_penalty, stay)."""
        if not 0 <= t < self.max_steps:
            raise ValueError(f"t must be in 0..{self.max_steps - 1} to act, got {t}")
        s = self._s(state_key)
        if not self.actions[s]:  # the goal: the episode is over
            return 0.0
        if action in self.actions[s]:  # fast path: an admissible action as the env spells it
            return self._value(self.q_TSA[t, s, self.actions[s].index(action)], state_key, t)
        normal = [normalize_action(a) for a in self.actions[s]]
        act = normalize_action(action)
        if act in normal:
            return self._value(self.q_TSA[t, s, normal.index(act)], state_key, t)
        self._value(self.v_TS[t, s], state_key, t)
        return -self.invalid_penalty + self.gamma * float(self.v_TS[t + 1, s])

    def advantage(self, state_key: str, t: int, action: str) -> float:
        return self.q(state_key, t, action) - self.v(state_key, t)


Row = tuple[int, int, float, int, float]  # (s, action slot, probability, s', reward)


def _state_rows(layout: MazeLayout, slip: float) -> tuple[list[State], list[Row]]:
    """Every state reachable from the start and its transitions; reward = outcome."""
    index: dict[State, int] = {layout.start_state: 0}
    queue, rows = deque([layout.start_state]), []
    while queue:
        state = queue.popleft()
        for slot, action in enumerate(admissible(layout, state)):
            for prob, nxt, _ in outcomes(layout, state, action, slip):
                if nxt not in index:
                    index[nxt] = len(index)
                    queue.append(nxt)
                rows.append((index[state], slot, prob, index[nxt], reward_of(layout, nxt)))
    return list(index), rows


def _progress_rows(
    layout: MazeLayout, slip: float, max_steps: int, turn_weight: float
) -> tuple[list[Progress], list[Row], np.ndarray]:
    """Every ``Progress`` reachable within max_steps steps, its transitions (from those reachable
    within max_steps - 1 steps), and its first step (BFS depth); reward = outcome + w * turn."""
    start = start_progress(layout)
    doors = door_index(layout)
    index: dict[Progress, int] = {start: 0}
    depth = [0]
    queue, rows = deque([start]), []
    while queue:
        prog = queue.popleft()
        if depth[index[prog]] >= max_steps:
            continue
        for slot, action in enumerate(admissible(layout, prog.state)):
            for prob, nxt, _ in outcomes(layout, prog.state, action, slip):
                nxt_prog, turn = advance(layout, prog, action, nxt, doors)
                if nxt_prog not in index:
                    index[nxt_prog] = len(index)
                    depth.append(depth[index[prog]] + 1)
                    queue.append(nxt_prog)
                rows.append(
                    (index[prog], slot, prob, index[nxt_prog], reward_of(layout, nxt) + turn_weight * turn)
                )
    return list(index), rows, np.array(depth)


def exact_values(
    layout: MazeLayout,
    policy: Policy | None = None,
    gamma: float = 0.95,
    max_steps: int = 20,
    slip: float = 0.0,
    invalid_penalty: float = 0.0,
    turn_weight: float = 0.0,
) -> ExactValues:
    """Backward induction over (state, t), t = max_steps-1..0, for ``policy`` (None = uniform).

    ``turn_weight`` w != 0: the values of outcome + w * turn reward (``advance``, what
    ``MazeEnv(turn_rewards=True)`` emits). That reward depends on the milestones reached so far, so
    the induction runs over ``Progress`` states, keyed by ``progress_key`` (``info["progress_key"]``);
    the policy still sees only ``describe(state)``. Their number grows with the rooms one can visit
    in max_steps steps: hundreds on 3x3 mazes, up to ~10^5 on 5x5 ones.
    """
    _check_settings(slip=slip, max_steps=max_steps, invalid_penalty=invalid_penalty)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not np.isfinite(turn_weight):
        raise ValueError(f"turn_weight must be finite, got {turn_weight}")
    depth_S: np.ndarray | None = None
    states: Sequence[State] | Sequence[Progress]
    if turn_weight == 0.0:
        states, rows = _state_rows(layout, slip)
        plain: list[State] = list(states)
        keys = tuple(describe(layout, s) for s in plain)
    else:
        progs, rows, depth_S = _progress_rows(layout, slip, max_steps, float(turn_weight))
        states, plain = progs, [p.state for p in progs]
        keys = tuple(progress_key(layout, p) for p in progs)
    actions = tuple(tuple(admissible(layout, s)) for s in plain)
    probs_SA = np.zeros((len(states), max(map(len, actions))))
    for i, (state, acts) in enumerate(zip(plain, actions)):
        if acts:
            probs_SA[i, : len(acts)] = _policy_probs(policy, describe(layout, state), list(acts))
    src, slot, prob, dst, reward = (np.array(col) for col in zip(*rows))
    mask_SA = np.arange(probs_SA.shape[1]) < np.array([len(a) for a in actions])[:, None]
    v_TS = np.zeros((max_steps + 1, len(states)))
    q_TSA = np.full((max_steps, *probs_SA.shape), np.nan)
    for t in range(max_steps - 1, -1, -1):
        q_SA = np.zeros(probs_SA.shape)
        np.add.at(q_SA, (src, slot), prob * (reward + gamma * v_TS[t + 1, dst]))
        q_TSA[t][mask_SA] = q_SA[mask_SA]
        v_TS[t] = (probs_SA * q_SA).sum(axis=1)
        if depth_S is not None:  # not reachable by step t: its successors were not all enumerated
            v_TS[t, depth_S > t] = np.nan
            q_TSA[t, depth_S > t] = np.nan
    return ExactValues(
        tuple(states),
        keys,
        actions,
        probs_SA,
        v_TS,
        q_TSA,
        float(gamma),
        float(invalid_penalty),
        float(turn_weight),
    )


def _policy_probs(policy: Policy | None, key: str, acts: list[str]) -> np.ndarray:
    if policy is None:
        return np.full(len(acts), 1.0 / len(acts))
    p = np.asarray(policy(key, acts), dtype=float)
    if p.shape != (len(acts),) or (p < 0).any() or abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"policy must return {len(acts)} non-negative probabilities summing to 1 for {acts}, got {p}"
        )
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
    """``make("maze")``: reach the goal room, opening coloured doors with keys picked up on the way.

    Opt-in extras (off by default: observations, rewards and infos are then unchanged):
    ``turn_rewards``: every step's info has ``turn_reward`` (``advance``: 1.0 for a key, a locked
    door or a room reached for the first time in the episode, else 0.0), and reset/step infos have
    ``progress_key`` (the state plus its milestones, the key of ``exact_values(turn_weight=w)``);
    the env reward stays the outcome. ``subgoals``: reset/step infos have the planner's HiPER tags
    for the next turn, ``subgoal`` (``subgoal_of`` the current state) and ``switch`` ("SWITCH" at
    reset and whenever the subgoal differs from the previous turn's, else "KEEP").
    """

    snapshot_fields = (
        "layout",
        "task_id",
        "state",
        "_t",
        "_done",
        "progress",
        "_doors",
        "_subgoal",
        "_last_obs",
    )

    def __init__(
        self,
        size: int = 3,
        n_doors: int = 1,
        slip: float = 0.0,
        max_steps: int = 20,
        num_tasks: int = 100,
        layout: MazeLayout | None = None,
        invalid_penalty: float = 0.0,
        expert: bool = False,
        render_mode: str | None = None,
        colours: int = len(COLOURS),
        turn_rewards: bool = False,
        subgoals: bool = False,
    ) -> None:
        super().__init__(render_mode=render_mode)
        self.expert = expert  # adds info["expert_action"]: the first action of a shortest plan from here
        _check_settings(slip=slip, max_steps=max_steps, invalid_penalty=invalid_penalty)
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        for name, flag in (("turn_rewards", turn_rewards), ("subgoals", subgoals)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if layout is None:
            generate_layout(
                0, size, n_doors, colours
            )  # validates size, n_doors, colours now, not at the first reset
        self.size, self.n_doors, self.colours, self.slip, self.max_steps = (
            size,
            n_doors,
            colours,
            slip,
            max_steps,
        )
        self.num_tasks, self.custom_layout, self.invalid_penalty = num_tasks, layout, invalid_penalty
        self.turn_rewards, self.subgoals = bool(turn_rewards), bool(subgoals)
        self.layout: MazeLayout | None = None
        self.state: State | None = None
        self.progress: Progress | None = None  # tracked with turn_rewards
        self.task_id = ""
        self._t = 0
        self._done = False
        self._doors: dict[tuple[str, str], int] = {}
        self._subgoal: str | None = None
        self._subgoal_cache: dict[tuple[str, State], str] = {}  # one planner call per (task, state)

    def task_ids(self) -> list[str]:
        return (
            [CUSTOM_TASK] if self.custom_layout is not None else [f"maze-{i}" for i in range(self.num_tasks)]
        )

    def layout_for(self, task_id: str) -> MazeLayout:
        """The layout a task id plays ("maze-<n>" -> generate_layout(n, size, n_doors, colours))."""
        if self.custom_layout is not None:
            if task_id != CUSTOM_TASK:
                raise ValueError(
                    f"this env plays a given layout; its only task id is {CUSTOM_TASK!r}, got {task_id!r}"
                )
            return self.custom_layout
        match = re.fullmatch(r"maze-(\d+)", str(task_id))
        if match is None:
            raise ValueError(f"maze task ids look like 'maze-<n>', got {task_id!r}")
        return generate_layout(int(match.group(1)), self.size, self.n_doors, self.colours)

    def exact_values(
        self, task_id: str, policy: Policy | None = None, gamma: float = 0.95, turn_weight: float = 0.0
    ) -> ExactValues:
        """True V/Q of ``policy`` on a task, with this env's max_steps, slip and invalid_penalty; with
        ``turn_weight`` w != 0, of outcome + w * turn reward (keyed by ``info["progress_key"]``)."""
        layout = self.layout_for(task_id)
        return exact_values(
            layout, policy, gamma, self.max_steps, self.slip, self.invalid_penalty, turn_weight
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task_id = (options or {}).get("task_id")
        if task_id is None:
            ids = self.task_ids()
            task_id = ids[int(self.np_random.integers(len(ids)))]
        self.layout, self.task_id = self.layout_for(task_id), task_id
        self.state, self._t, self._done = self.layout.start_state, 0, False
        if self.turn_rewards:
            self.progress, self._doors = start_progress(self.layout), door_index(self.layout)
        self._subgoal = None
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
        turn_reward = None
        if self.progress is not None:  # turn_rewards
            self.progress, turn_reward = advance(self.layout, self.progress, chosen, self.state, self._doors)
        self._t += 1
        terminated = self.state[0] == self.layout.goal
        truncated = not terminated and self._t >= self.max_steps
        self._done = terminated or truncated
        self._last_obs = feedback + "\n" + describe(self.layout, self.state)
        info = self._info(valid=chosen is not None)
        if turn_reward is not None:
            info["turn_reward"] = turn_reward
        return self._last_obs, float(reward), terminated, truncated, info

    def _info(self, valid: bool) -> dict[str, Any]:
        assert self.layout is not None and self.state is not None
        won = self.state[0] == self.layout.goal
        info = {
            "state_key": describe(self.layout, self.state),
            "admissible_actions": admissible(self.layout, self.state),
            "valid": valid,
            "success": won,
            "won": won,
            "task_id": self.task_id,
        }
        if self.expert and not won:
            plan = solve(self.layout, self.state)
            info["expert_action"] = plan[0] if plan else None
        if self.progress is not None:  # turn_rewards
            info["progress_key"] = progress_key(self.layout, self.progress)
        if self.subgoals:
            cache_key = (self.task_id, self.state)
            if cache_key not in self._subgoal_cache:
                self._subgoal_cache[cache_key] = subgoal_of(self.layout, self.state)
            subgoal = self._subgoal_cache[cache_key]
            info["switch"] = "KEEP" if subgoal == self._subgoal else "SWITCH"
            info["subgoal"] = self._subgoal = subgoal
        return info
