"""The maze env: the env contract, its generator, and exact values checked against hand-solved mazes."""

from __future__ import annotations

import itertools
from collections import deque

import gymnasium
import numpy as np
import pytest

from agentrl.envs import check_env, make
from agentrl.envs.maze import MazeEnv, MazeLayout, Passage, describe, exact_values, generate_layout, solve

NONE: frozenset[str] = frozenset()
RED = frozenset({"red"})


def corridor(n: int = 3) -> MazeLayout:
    """Rooms A-B-C... in a row going east; start at A, goal at the last room."""
    rooms = tuple("ABCDE"[:n])
    passages = tuple(Passage(a, "east", b) for a, b in itertools.pairwise(rooms))
    return MazeLayout(rooms=rooms, passages=passages, keys={}, start="A", goal=rooms[-1])


def locked() -> MazeLayout:
    """A -east- B -east (red door)- C, red key in A, goal C."""
    return MazeLayout(
        rooms=("A", "B", "C"),
        passages=(("A", "east", "B"), ("B", "east", "C", "red")),
        keys={"red": "A"},
        start="A",
        goal="C",
    )


def key(layout: MazeLayout, room: str, held: frozenset[str] = NONE) -> str:
    return describe(layout, (room, held))


def play(env: MazeEnv, seed: int, task_id: str, actions_rng_seed: int, n: int = 30) -> list:
    rng = np.random.default_rng(actions_rng_seed)
    obs, info = env.reset(seed=seed, options={"task_id": task_id})
    transcript = [obs]
    for _ in range(n):
        obs, reward, term, trunc, info = env.step(str(rng.choice(info["admissible_actions"])))
        transcript.append((obs, reward, term, trunc, info["state_key"]))
        if term or trunc:
            break
    return transcript


# ----------------------------------------------------------------------------- env contract


@pytest.mark.parametrize(
    "kw", [{}, {"slip": 0.3}, {"size": 4, "n_doors": 2, "slip": 0.1}, {"layout": locked()}]
)
def test_check_env(kw: dict) -> None:
    check_env(make("maze", **kw), other=make("maze", **kw))


def test_gymnasium_make() -> None:
    env = gymnasium.make("agentrl/Maze-v0", slip=0.2)
    obs, info = env.reset(seed=1, options={"task_id": "maze-7"})
    assert obs == info["state_key"] and "Your task is to reach the" in obs
    obs, _reward, _term, _trunc, info = env.step(info["admissible_actions"][0])
    assert info["valid"] is True and info["task_id"] == "maze-7"


def test_same_seed_same_transcript_and_slip_seeds_differ() -> None:
    env, other = make("maze", slip=0.5), make("maze", slip=0.5)
    assert play(env, 3, "maze-2", 0) == play(other, 3, "maze-2", 0)
    transcripts = {str(play(env, seed, "maze-2", 0)) for seed in range(10)}
    assert len(transcripts) > 1  # the slips differ between seeds under identical actions


def test_task_drawn_from_seed_and_task_ids() -> None:
    env = make("maze", num_tasks=7)
    assert env.task_ids() == [f"maze-{i}" for i in range(7)]
    first = env.reset(seed=11)[1]["task_id"]
    assert env.reset(seed=11)[1]["task_id"] == first and first in env.task_ids()
    assert len({env.reset(seed=s)[1]["task_id"] for s in range(40)}) > 1
    assert make("maze", layout=corridor()).task_ids() == ["maze-custom"]


def test_moves_keys_doors_goal() -> None:
    env = make("maze", layout=locked())
    obs, info = env.reset(seed=0)
    assert info["admissible_actions"] == ["go east", "take red key"]
    assert (
        info["admissible_actions"] is not env.reset(seed=0)[1]["admissible_actions"]
    )  # a new list each call
    obs, reward, term, trunc, info = env.step("go east")
    obs, reward, term, trunc, info = env.step("  GO   East ")  # case and whitespace are normalised
    assert obs.startswith("The red door is locked.\n") and info["valid"] is True and reward == 0.0
    assert info["state_key"] == key(locked(), "B") and "east (red door)" in obs
    env.step("go west")
    obs, *_, info = env.step("take red key")
    assert "You carry: red key." in obs and info["admissible_actions"] == ["go east"]
    env.step("go east")
    obs, reward, term, trunc, info = env.step("go east")
    assert (reward, term, trunc, info["success"], info["won"]) == (1.0, True, False, True, True)
    assert info["admissible_actions"] == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step("go west")


def test_invalid_action_is_a_noop_and_truncation() -> None:
    env = make("maze", layout=corridor(), max_steps=3, invalid_penalty=0.1)
    obs0, info0 = env.reset(seed=0)
    for t in range(3):
        obs, reward, term, trunc, info = env.step("fly to the moon")
        assert obs == "Nothing happens.\n" + obs0 and info["state_key"] == info0["state_key"]
        assert (reward, info["valid"], term, trunc) == (-0.1, False, False, t == 2)
    with pytest.raises(RuntimeError):
        env.step("go east")


def test_bad_input_has_clear_errors() -> None:
    with pytest.raises(ValueError, match="maze-<n>"):
        make("maze").reset(options={"task_id": "level-3"})
    with pytest.raises(ValueError, match="size"):
        make("maze", size=9)
    with pytest.raises(ValueError, match="n_doors"):
        make("maze", size=3, n_doors=3)
    with pytest.raises(ValueError, match="slip"):
        make("maze", slip=1.0)
    with pytest.raises(ValueError, match="unknown room"):
        MazeLayout(rooms=("A", "B"), passages=(("A", "east", "B"),), keys={"red": "Z"}, start="A", goal="B")
    with pytest.raises(ValueError, match="already has an exit"):
        MazeLayout(
            rooms=("A", "B", "C"),
            passages=(("A", "east", "B"), ("A", "east", "C")),
            keys={},
            start="A",
            goal="B",
        )
    with pytest.raises(ValueError, match="probabilities"):
        exact_values(corridor(), policy=lambda s, acts: [1.0, 1.0])


# ----------------------------------------------------------------------------- generator


def bfs_reaches_goal(layout: MazeLayout, allow_keys: bool) -> bool:
    """Independent BFS over (room, held keys) from the layout's raw data."""
    start = (layout.start, NONE)
    seen, queue = {start}, deque([start])
    while queue:
        room, held = queue.popleft()
        if room == layout.goal:
            return True
        nexts = [(room, held | {c}) for c, r in layout.keys.items() if r == room and allow_keys]
        for a, _, b, door in layout.passages:
            if room in (a, b) and (door is None or door in held):
                nexts.append((b if room == a else a, held))
        for s in nexts:
            if s not in seen:
                seen.add(s)
                queue.append(s)
    return False


@pytest.mark.parametrize("size,n_doors", [(3, 1), (3, 2), (4, 2), (5, 3)])
def test_generated_layouts_are_solvable_and_doors_matter(size: int, n_doors: int) -> None:
    for seed in range(50):
        layout = generate_layout(seed, size, n_doors)
        assert len(layout.rooms) == size * size and bfs_reaches_goal(layout, allow_keys=True)
        assert sum(p.door is not None for p in layout.passages) == n_doors == len(layout.keys)
        assert bfs_reaches_goal(layout, allow_keys=False) is (n_doors == 0)  # every door blocks the goal
        plan = solve(layout)
        assert plan is not None and sum(a.startswith("take") for a in plan) == n_doors
    assert generate_layout(5, 3, 1) == generate_layout.__wrapped__(5, 3, 1)  # deterministic by seed
    assert generate_layout(5, 3, 1) != generate_layout(6, 3, 1)


def test_solve_plan_wins_in_the_env() -> None:
    env = make("maze", n_doors=2, size=4)
    env.reset(seed=0, options={"task_id": "maze-9"})
    for action in solve(env.layout):
        _obs, reward, term, _trunc, info = env.step(action)
    assert term and reward == 1.0 and info["success"]


# ----------------------------------------------------------------------------- exact values


def test_corridor_uniform_values_by_hand() -> None:
    # A -> B -> C(goal); A: [go east]; B: [go east (reward 1, terminal), go west]; uniform, gamma 0.9.
    # With k steps left: V_k(A) = 0.9 V_{k-1}(B), V_k(B) = 0.5 * 1 + 0.5 * 0.9 V_{k-1}(A), V_0 = 0.
    # k=1: A 0,            B 0.5
    # k=2: A 0.9*0.5=0.45, B 0.5 + 0.45*0     = 0.5
    # k=3: A 0.9*0.5=0.45, B 0.5 + 0.45*0.45  = 0.7025
    # k=4: A 0.9*0.7025=0.63225, B 0.5 + 0.45*0.45 = 0.7025
    layout = corridor()
    by_hand = {1: (0.0, 0.5), 2: (0.45, 0.5), 3: (0.45, 0.7025), 4: (0.63225, 0.7025)}
    for horizon, (va, vb) in by_hand.items():
        ev = exact_values(layout, gamma=0.9, max_steps=horizon)
        assert ev.v(key(layout, "A"), 0) == pytest.approx(va, abs=1e-12)
        assert ev.v(key(layout, "B"), 0) == pytest.approx(vb, abs=1e-12)
    ev = exact_values(layout, gamma=0.9, max_steps=4)
    for t in range(5):  # at step t there are 4 - t steps left
        assert ev.v(key(layout, "A"), t) == pytest.approx(
            ([0.0] + [v[0] for v in by_hand.values()])[4 - t], abs=1e-12
        )
    assert (
        ev.v(key(layout, "C"), 2) == 0.0 and ev.q(key(layout, "C"), 2, "go west") == 0.0
    )  # goal is terminal
    assert ev.q(key(layout, "B"), 0, "go east") == pytest.approx(1.0)
    assert ev.q(key(layout, "B"), 0, "go west") == pytest.approx(0.9 * 0.45)  # 0.9 V_3(A)
    assert ev.advantage(key(layout, "B"), 0, "go east") == pytest.approx(1.0 - 0.7025)
    assert ev.q(key(layout, "B"), 0, "dance") == pytest.approx(0.9 * 0.7025)  # no-op: 0 + 0.9 V_3(B)
    assert ev.q(key(layout, "B"), 3, "dance") == 0.0  # last step: truncated after it, no bootstrap
    with pytest.raises(ValueError, match="t must be"):
        ev.q(key(layout, "B"), 4, "go east")
    with pytest.raises(KeyError, match="not reachable"):
        ev.v("somewhere else", 0)


def test_locked_door_values_by_hand() -> None:
    # States: A0=(A,{}) [go east, take red key], Ar=(A,{red}) [go east], B0=(B,{}) [go east: locked, stay; go west],
    # Br=(B,{red}) [go east: goal; go west]. Uniform, gamma 0.9, max_steps 3.
    # k=1: Br = 0.5*1 = 0.5; A0 = Ar = B0 = 0 (no reward within one step).
    # k=2: Ar = 0.9*Br_1 = 0.45; Br = 0.5 + 0.45*Ar_1 = 0.5; A0 = 0.45*(B0_1 + Ar_1) = 0; B0 = 0.45*(B0_1 + A0_1) = 0.
    # k=3: A0 = 0.45*(B0_2 + Ar_2) = 0.45*0.45 = 0.2025.
    layout = locked()
    ev = exact_values(layout, gamma=0.9, max_steps=3)
    start = key(layout, "A")
    assert ev.v(start, 0) == pytest.approx(0.2025)
    assert ev.q(start, 0, "take red key") == pytest.approx(0.9 * 0.45)
    assert ev.q(start, 0, "go east") == pytest.approx(0.0)
    assert ev.advantage(start, 0, "take red key") == pytest.approx(0.405 - 0.2025)
    assert ev.v(key(layout, "B", RED), 2) == pytest.approx(0.5)
    assert ev.v(key(layout, "A", RED), 1) == pytest.approx(0.45)
    assert len(ev.states) == 5  # A0, Ar, B0, Br and (C,{red}); the goal without the key is unreachable

    def greedy(state_key: str, acts: list[str]) -> list[float]:
        """Take the key when you see it, else go east: wins at the third step."""
        choice = next((a for a in acts if a.startswith("take")), "go east")
        return [float(a == choice) for a in acts]

    assert exact_values(layout, greedy, gamma=0.9, max_steps=3).v(start, 0) == pytest.approx(0.81)  # 0.9^2
    assert exact_values(layout, greedy, gamma=0.9, max_steps=2).v(start, 0) == 0.0


def test_slip_values_satisfy_the_bellman_equation() -> None:
    p, g = 0.3, 0.9
    # A -> B(goal), one action: V_k(A) = (1-p)*1 + p*g*V_{k-1}(A) = (1-p)(1 - (p g)^k) / (1 - p g).
    two = corridor(2)
    for horizon in range(1, 7):
        ev = exact_values(two, gamma=g, max_steps=horizon, slip=p)
        assert ev.v(key(two, "A"), 0) == pytest.approx(0.7 * (1 - 0.27**horizon) / (1 - 0.27), abs=1e-12)
    # A - B - C(goal), uniform at B: a slip keeps you where you are.
    p = 0.25
    three = corridor(3)
    ev = exact_values(three, gamma=g, max_steps=6, slip=p)
    va = vb = 0.0
    for t in range(5, -1, -1):
        va, vb = (
            (1 - p) * g * vb + p * g * va,
            0.5 * ((1 - p) * 1 + p * g * vb) + 0.5 * ((1 - p) * g * va + p * g * vb),
        )
        assert ev.v(key(three, "A"), t) == pytest.approx(va, abs=1e-12)
        assert ev.v(key(three, "B"), t) == pytest.approx(vb, abs=1e-12)


def test_env_exact_values_use_env_settings() -> None:
    env = make("maze", slip=0.2, max_steps=12, invalid_penalty=0.05)
    ev = env.exact_values("maze-4", gamma=0.9)
    direct = exact_values(env.layout_for("maze-4"), gamma=0.9, max_steps=12, slip=0.2, invalid_penalty=0.05)
    np.testing.assert_array_equal(ev.v_TS, direct.v_TS)
    assert ev.max_steps == 12 and ev.v_TS.shape == (13, len(ev.states))
    s = ev.state_keys[0]
    assert ev.q(s, 0, "sing") == pytest.approx(-0.05 + 0.9 * ev.v(s, 1))


def test_monte_carlo_matches_exact_value() -> None:
    gamma = 0.95
    env = make("maze", slip=0.2, max_steps=20)
    _obs, info = env.reset(seed=0, options={"task_id": "maze-5"})
    v0 = env.exact_values("maze-5", gamma=gamma).v(info["state_key"], 0)
    rng = np.random.default_rng(0)
    returns = np.zeros(2000)
    for i in range(2000):
        _obs, info = env.reset(seed=i, options={"task_id": "maze-5"})
        done, t = False, 0
        while not done:
            _obs, reward, term, trunc, info = env.step(str(rng.choice(info["admissible_actions"])))
            returns[i] += gamma**t * reward
            done, t = term or trunc, t + 1
    se = returns.std(ddof=1) / np.sqrt(len(returns))
    assert 0.1 < v0 < 0.5 and se > 0  # a task where random play both wins and loses
    assert abs(returns.mean() - v0) < 3 * se


def test_expert_action_follows_a_shortest_plan_and_recovers_after_a_detour():
    env = MazeEnv(expert=True, slip=0.3)
    for seed in range(5):
        _obs, info = env.reset(seed=seed, options={"task_id": f"maze-{seed}"})
        assert info["expert_action"] == solve(env.layout)[0]
        _, _, _, _, info = env.step(info["admissible_actions"][-1])  # possibly a detour
        for _ in range(40):
            _obs, _reward, terminated, truncated, info = env.step(info["expert_action"])
            if terminated or truncated:
                break
        assert terminated and info["success"] and "expert_action" not in info
    assert "expert_action" not in MazeEnv().reset(seed=0)[1]


def test_colours_limits_the_key_colours():
    for seed in range(30):
        one = generate_layout(seed, 3, 1, colours=1)
        assert set(one.keys) == {"red"} and {p.door for p in one.passages} == {None, "red"}
        two = generate_layout(seed, 3, 2, colours=2)
        assert set(two.keys) == {"red", "blue"} and {p.door for p in two.passages} == {None, "red", "blue"}
        assert solve(one) is not None and solve(two) is not None
    with pytest.raises(ValueError, match="n_doors must be in 0..1"):
        generate_layout(0, 3, 2, colours=1)
    with pytest.raises(ValueError, match="colours must be in 1..5"):
        MazeEnv(colours=0)
