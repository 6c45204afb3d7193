"""The data model: JSONL round trip, corrupt files, StepBatch columns."""

import json
import math

import numpy as np
import pytest

from agentrl.types import (
    Step,
    StepBatch,
    Trajectory,
    TrajectoryFileError,
    TrajectoryGroup,
    read_trajectories,
    stable_hash,
    write_trajectories,
)


def make_traj(i: int, group: str = "g0", n_steps: int = 3, **kw) -> Trajectory:
    steps = [
        Step(
            obs=f"obs {t} \u00e9\u4e2d",
            response=f"<action>go {t}</action>",
            action=f"Go  {t}",
            reward=0.1 * t + 1e-17,
            valid=t != 1,
            state_key=f"room {t % 2}",
            turn_reward=None if t == 0 else 0.5,
            prompt=[{"role": "user", "content": "hi"}],
            prompt_ids=[1, 2, 3],
            response_ids=[4, 5],
            response_logprobs=[-0.1, -2.5e-9],
            info={"tool_call": t == 0, "nested": {"a": [1, 2.5]}},
        )
        for t in range(n_steps)
    ]
    return Trajectory(
        task_id="task",
        group_id=group,
        traj_id=f"{group}/{i}",
        steps=steps,
        terminated=True,
        success=i % 2 == 0,
        **kw,
    )


def test_outcome_defaults_to_sum_of_rewards():
    t = make_traj(0)
    assert t.outcome == pytest.approx(0.0 + 0.1 + 0.2 + 3e-17)
    assert Trajectory("a", "g", "g/0", [Step("o", reward=2.0)], outcome=5.0).outcome == 5.0


def test_jsonl_round_trip_is_exact(tmp_path):
    trajs = [make_traj(i) for i in range(4)]
    trajs[1].outcome = 1 / 3
    trajs[2].steps[0].reward = math.pi * 1e-300
    path = tmp_path / "t.jsonl"
    assert write_trajectories(path, trajs) == 4
    back = read_trajectories(path)
    assert back == trajs
    assert back[2].steps[0].reward == math.pi * 1e-300


def test_to_dict_is_asdict_and_a_copy():
    """to_dict builds asdict's result without its per-atom deep copies: equal, in the same key order,
    and as independent of the trajectory (nested lists and dicts are copies)."""
    import dataclasses

    @dataclasses.dataclass
    class Note:
        text: str
        ids: list

    t = make_traj(0, n_steps=2, info={"note": Note("a", [1]), "pair": (1, [2.0]), "x": np.float64(0.5)})
    t.steps[1].info["rows"] = [[1, 2], {"k": None}]
    d = t.to_dict()
    assert d == dataclasses.asdict(t)
    assert list(d) == list(dataclasses.asdict(t)) and list(d["steps"][0]) == [
        f.name for f in dataclasses.fields(Step)
    ]
    assert isinstance(d["info"]["note"], dict) and isinstance(d["info"]["pair"], tuple)
    d["steps"][0]["prompt_ids"].append(9)
    d["steps"][1]["info"]["rows"][0].append(3)
    d["info"]["pair"][1].append(1.0)
    assert t.steps[0].prompt_ids == [1, 2, 3] and t.steps[1].info["rows"][0] == [1, 2]
    assert t.info["pair"] == (1, [2.0])


def test_append_mode_keeps_earlier_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectories(path, [make_traj(0)])
    write_trajectories(path, [make_traj(1)], append=True)
    assert [t.traj_id for t in read_trajectories(path)] == ["g0/0", "g0/1"]


def test_corrupt_and_truncated_lines_are_named_and_good_lines_kept(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectories(path, [make_traj(i) for i in range(3)])
    lines = path.read_text().splitlines()
    lines.insert(1, '{"task_id": "x", "group_id": "g", "traj_id": "bad", "steps": [{"obs": "a", "wat": 1}]}')
    lines.append(lines[0][: len(lines[0]) // 2])  # a line cut off mid-write
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrajectoryFileError) as exc:
        read_trajectories(path)
    err = exc.value
    assert str(path) in str(err)
    assert [n for n, _ in err.bad_lines] == [2, 5]
    assert "unknown field" in err.bad_lines[0][1] and "wat" in err.bad_lines[0][1]
    assert [t.traj_id for t in err.trajectories] == ["g0/0", "g0/1", "g0/2"]
    with pytest.warns(UserWarning, match="line 2"):
        good = read_trajectories(path, errors="skip")
    assert len(good) == 3


def test_missing_required_fields_are_reported(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"task_id": "a", "group_id": "g", "steps": []}) + "\n[1, 2]\n")
    with pytest.raises(TrajectoryFileError) as exc:
        read_trajectories(path)
    reasons = dict(exc.value.bad_lines)
    assert "traj_id" in reasons[1]
    assert "JSON object" in reasons[2]


def test_group_rejects_foreign_trajectory():
    with pytest.raises(ValueError, match="expected"):
        TrajectoryGroup("task", "g0", [make_traj(0), make_traj(1, group="g1")])


def test_step_batch_columns():
    trajs = [make_traj(0, n_steps=3), make_traj(1, n_steps=2), make_traj(0, group="g1", n_steps=1)]
    trajs[1].truncated, trajs[1].terminated = True, False
    b = StepBatch.from_trajectories([TrajectoryGroup("task", "g0", trajs[:2]), trajs[2]])
    assert len(b) == 6 and b.num_trajectories == 3 and b.num_groups == 2
    assert list(b.traj_id) == ["g0/0"] * 3 + ["g0/1"] * 2 + ["g1/0"]
    assert list(b.group_id) == ["g0"] * 5 + ["g1"]
    assert list(b.turn) == [0, 1, 2, 0, 1, 0]
    assert list(b.last) == [False, False, True, False, True, True]
    assert list(b.done) == [False, False, True, False, False, True]
    assert list(b.truncated) == [False] * 3 + [True, True] + [False]
    assert list(b.valid) == [True, False, True, True, False, True]
    np.testing.assert_allclose(b.outcome[:3], trajs[0].outcome)
    assert b.state_key[0] == b.state_key[2] == b.state_key[3] == stable_hash("room 0")
    assert b.state_key[1] == stable_hash("room 1")
    np.testing.assert_array_equal(b.turn_reward, [0.0, 0.5, 0.5, 0.0, 0.5, 0.0])
    assert list(b.tool_call) == [True, False, False, True, False, True]
    assert b.switch is None and b.subgoal is None
    # actions equal after normalisation share a key
    assert (
        b.action_key[0]
        == StepBatch.from_trajectories([Trajectory("t", "g", "x", [Step("o", action="go 0")])]).action_key[0]
    )


def test_step_batch_optional_columns_absent_and_stable_hash():
    t = Trajectory("t", "g", "g/0", [Step("o"), Step("p")])
    b = StepBatch.from_trajectories([t])
    assert b.state_key is None and b.turn_reward is None and b.tool_call is None
    assert stable_hash("abc") == stable_hash("abc") != stable_hash("abd")


def test_step_batch_rejects_duplicate_ids_and_mixed_tasks():
    with pytest.raises(ValueError, match="duplicate traj_id"):
        StepBatch.from_trajectories([make_traj(0), make_traj(0)])
    other = make_traj(1)
    other.task_id = "other task"
    with pytest.raises(ValueError, match="mixes tasks"):
        StepBatch.from_trajectories([make_traj(0), other])


def test_take_and_canonical_order():
    b = StepBatch.from_trajectories([make_traj(i) for i in range(3)])
    assert b.is_canonical()
    perm = np.array([4, 0, 8, 1, 2, 3, 7, 6, 5])
    p = b.take(perm)
    assert not p.is_canonical()
    assert list(p.traj_id) == [b.traj_id[i] for i in perm]
    back = p.take(p.canonical_order())
    assert back.is_canonical()
    np.testing.assert_array_equal(back.turn, b.turn)
    np.testing.assert_array_equal(back.traj_idx, b.traj_idx)


def test_summary():
    b = StepBatch.from_trajectories([make_traj(i) for i in range(4)])
    s = b.summary()
    assert s["trajectories"] == 4 and s["rows"] == 12 and s["success_rate"] == 0.5
    assert s["invalid_rate"] == pytest.approx(4 / 12)
