"""The maze's opt-in turn rewards and planner subgoals, and exact values of outcome + turn rewards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agentrl.envs import check_env, make
from agentrl.envs.maze import (
    MazeEnv,
    MazeLayout,
    admissible,
    describe,
    exact_values,
    outcomes,
    progress_key,
    reward_of,
    solve,
    start_progress,
)

INFO_KEYS = {"state_key", "admissible_actions", "valid", "success", "won", "task_id"}


def door_loop() -> MazeLayout:
    """S -north- K (red key) -east- X -south- B -east (red door)- G (goal), and a second red door
    from S east to B: that one can be passed for the first time into a room already visited."""
    return MazeLayout(
        rooms=("S", "K", "X", "B", "G"),
        passages=(
            ("S", "north", "K"),
            ("K", "east", "X"),
            ("X", "south", "B"),
            ("S", "east", "B", "red"),
            ("B", "east", "G", "red"),
        ),
        keys={"red": "K"},
        start="S",
        goal="G",
    )


def test_turn_rewards_and_subgoals_on_a_hand_built_layout() -> None:
    env = MazeEnv(layout=door_loop(), turn_rewards=True, subgoals=True)
    _obs, info = env.reset(seed=0)
    assert "turn_reward" not in info and info["progress_key"].endswith("Visited: S.\nDoors passed: none.")
    assert (info["switch"], info["subgoal"]) == ("SWITCH", "take the red key")
    # action, its turn reward, then the planner's switch and subgoal for the next turn
    script = [
        ("go east", 0.0, "KEEP", "take the red key"),  # locked: nothing new
        ("go north", 1.0, "KEEP", "take the red key"),  # new room K
        ("take red key", 1.0, "SWITCH", "open the red door"),  # a key; the plan goes round by X to B-G
        ("go east", 1.0, "KEEP", "open the red door"),  # new room X
        ("go south", 1.0, "KEEP", "open the red door"),  # new room B
        ("go west", 1.0, "KEEP", "open the red door"),  # a new door (S-B) into S, a room already visited
        ("dance", 0.0, "KEEP", "open the red door"),  # invalid
        ("go east", 0.0, "KEEP", "open the red door"),  # the same door again
        ("go north", 0.0, "KEEP", "open the red door"),  # X again
        ("go south", 0.0, "KEEP", "open the red door"),
        ("go east", 1.0, "SWITCH", "reach the G"),  # door B-G and the goal, both new: still 1.0
    ]
    for action, turn, switch, subgoal in script:
        _obs, reward, terminated, _truncated, info = env.step(action)
        assert (info["turn_reward"], info["switch"], info["subgoal"]) == (turn, switch, subgoal), action
        assert reward == (1.0 if terminated else 0.0)  # the env reward stays the outcome
    assert terminated and info["success"]
    assert info["progress_key"].endswith("Visited: S, K, X, B, G.\nDoors passed: red (S-B), red (B-G).")


def history_turn_rewards(
    layout: MazeLayout, states: list[tuple[str, frozenset]], actions: list[str]
) -> list[float]:
    """The documented turn rewards recomputed from a whole transcript (state before every step)."""
    out, rooms, doors = [], {layout.start}, set()
    for (room, held), _action, (room2, held2) in zip(states, actions, states[1:]):
        new = held2 != held or room2 not in rooms
        for p in layout.passages:
            if p.door is not None and room2 != room and {room, room2} == {p.a, p.b} and p not in doors:
                doors.add(p)
                new = True
        rooms.add(room2)
        out.append(float(new))
    return out


@pytest.mark.parametrize("task", ["maze-0", "maze-3", "maze-8"])
def test_turn_rewards_match_the_transcript_with_slips(task: str) -> None:
    env = MazeEnv(size=3, n_doors=2, slip=0.3, turn_rewards=True, subgoals=True)
    rng = np.random.default_rng(1)
    for seed in range(5):
        _obs, info = env.reset(seed=seed, options={"task_id": task})
        states, actions, turns = [env.state], [], []
        done = False
        while not done:
            action = str(rng.choice(info["admissible_actions"] + ["go nowhere"]))
            _obs, _reward, terminated, truncated, info = env.step(action)
            states.append(env.state)
            actions.append(action)
            turns.append(info["turn_reward"])
            done = terminated or truncated
        assert turns == history_turn_rewards(env.layout, states, actions)
        assert sum(turns) <= len(env.layout.rooms) - 1 + 2 * len(env.layout.keys)


def test_default_env_emits_nothing_new_and_flags_keep_the_dynamics() -> None:
    def transcript(env: MazeEnv) -> list:
        rng = np.random.default_rng(0)
        obs, info = env.reset(seed=4, options={"task_id": "maze-2"})
        out = [(obs, set(info))]
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(str(rng.choice(info["admissible_actions"])))
            out.append((obs, reward, terminated, truncated, info["state_key"], set(info)))
            done = terminated or truncated
        return out

    plain = transcript(MazeEnv(slip=0.2))
    extra = transcript(MazeEnv(slip=0.2, turn_rewards=True, subgoals=True))
    assert all(row[-1] == INFO_KEYS for row in plain)
    assert all(row[-1] - INFO_KEYS <= {"turn_reward", "progress_key", "switch", "subgoal"} for row in extra)
    assert [row[:-1] for row in plain] == [row[:-1] for row in extra]
    assert extra[1][-1] == INFO_KEYS | {"turn_reward", "progress_key", "switch", "subgoal"}


def test_check_env_and_bad_flags() -> None:
    kw = {"slip": 0.3, "turn_rewards": True, "subgoals": True}
    check_env(make("maze", **kw), other=make("maze", **kw))
    with pytest.raises(ValueError, match="turn_rewards must be True or False"):
        MazeEnv(turn_rewards="yes")
    with pytest.raises(ValueError, match="subgoals must be True or False"):
        MazeEnv(subgoals=1)
    with pytest.raises(ValueError, match="turn_weight must be finite"):
        exact_values(door_loop(), turn_weight=math.inf)


def test_planner_subgoals_follow_a_shortest_plan() -> None:
    env = MazeEnv(size=4, n_doors=2, subgoals=True)
    for task in ("maze-1", "maze-5"):
        _obs, info = env.reset(seed=0, options={"task_id": task})
        tags = [(info["switch"], info["subgoal"])]
        for action in solve(env.layout):
            _obs, _reward, terminated, _truncated, info = env.step(action)
            tags.append((info["switch"], info["subgoal"]))
        doors = [f"open the {p.door} door" for p in env.layout.passages if p.door]
        subgoals = [s for sw, s in tags if sw == "SWITCH"]
        assert subgoals[-1] == f"reach the {env.layout.goal}" and terminated
        assert len(subgoals) == 2 * len(doors) + 1 and set(subgoals[1::2]) == set(
            doors
        )  # key, door, key, door, goal
        assert all(s.startswith("take the ") for s in subgoals[:-1:2])
        assert all((sw == "SWITCH") == (s != prev) for (sw, s), (_, prev) in zip(tags[1:], tags))


def brute_force_q(
    layout: MazeLayout, gamma: float, slip: float, weight: float, horizon: int
) -> dict[str, float]:
    """Q at t=0 of every first action under the uniform policy, by expanding every history
    (actions and slips) up to ``horizon`` steps, turn rewards recomputed from each history."""

    def value(states: list, actions: list, t: int) -> float:
        acts = admissible(layout, states[-1])
        if t == horizon or not acts:
            return 0.0
        return float(np.mean([q(states, actions, t, a) for a in acts]))

    def q(states: list, actions: list, t: int, action: str) -> float:
        total = 0.0
        for prob, nxt, _ in outcomes(layout, states[-1], action, slip):
            turn = history_turn_rewards(layout, states + [nxt], actions + [action])[-1]
            r = reward_of(layout, nxt) + weight * turn
            total += prob * (r + gamma * value(states + [nxt], actions + [action], t + 1))
        return total

    start = [layout.start_state]
    return {a: q(start, [], 0, a) for a in admissible(layout, layout.start_state)}


@pytest.mark.parametrize("slip,weight", [(0.0, 1.0), (0.25, 1.0), (0.25, 0.5)])
def test_exact_values_with_turn_rewards_match_brute_force(slip: float, weight: float) -> None:
    layout, gamma, horizon = door_loop(), 0.9, 6
    ev = exact_values(layout, gamma=gamma, max_steps=horizon, slip=slip, turn_weight=weight)
    start = progress_key(layout, start_progress(layout))
    brute = brute_force_q(layout, gamma, slip, weight, horizon)
    assert set(brute) == {"go north", "go east"}
    for action, q in brute.items():
        assert ev.q(start, 0, action) == pytest.approx(q, abs=1e-12)
    assert ev.v(start, 0) == pytest.approx(np.mean(list(brute.values())), abs=1e-12)
    assert brute["go north"] > 0.5 * weight  # the turn rewards matter
    # linear in the weight: outcome values (the plain DP) + weight * turn values
    plain = exact_values(layout, gamma=gamma, max_steps=horizon, slip=slip).v(
        describe(layout, layout.start_state), 0
    )
    double = exact_values(layout, gamma=gamma, max_steps=horizon, slip=slip, turn_weight=2 * weight).v(
        start, 0
    )
    assert double - ev.v(start, 0) == pytest.approx(ev.v(start, 0) - plain, abs=1e-12)


def test_progress_states_are_keyed_and_unreachable_steps_raise() -> None:
    layout = door_loop()
    env = MazeEnv(layout=layout, max_steps=6, turn_rewards=True)
    ev = env.exact_values("maze-custom", gamma=0.9, turn_weight=1.0)
    _obs, info = env.reset(seed=0)
    assert ev.state_keys[0] == info["progress_key"] and ev.turn_weight == 1.0
    for action in ("go north", "take red key", "go south"):
        _obs, _reward, _terminated, _truncated, info = env.step(action)
    assert ev.v(info["progress_key"], 3) == pytest.approx(
        np.mean([ev.q(info["progress_key"], 3, a) for a in ("go north", "go east")])
    )
    with pytest.raises(KeyError, match="cannot be reached by step 2"):
        ev.v(info["progress_key"], 2)  # three steps are needed to hold the key back in S
    with pytest.raises(KeyError, match="cannot be reached by step 1"):
        ev.q(info["progress_key"], 1, "go east")
