"""BFCL v4 multi-turn env on bfcl-eval's own data, APIs and checkers."""

import json

import pytest

from agentrl.envs import check_env, make
from agentrl.envs.tools.bfcl import (
    BFCLMultiTurnEnv,
    bfcl_tool_schema,
    ground_truth_actions,
    load_entries,
    parse_call,
)


def replay(env, task_id, turns):
    env.reset(seed=0, options={"task_id": task_id})
    steps = []
    for turn in turns:
        for action in turn:
            steps.append(env.step(action))
            if steps[-1][2] or steps[-1][3]:
                return steps
    return steps


@pytest.mark.parametrize(
    "category",
    ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context"],
)
def test_ground_truth_replay_scores_one_on_every_task(category):
    env = BFCLMultiTurnEnv(category)
    assert len(env.task_ids()) == 200
    for task_id in env.task_ids():
        steps = replay(env, task_id, ground_truth_actions(env.entries[task_id]))
        _obs, reward, terminated, _truncated, info = steps[-1]
        assert terminated and reward == 1.0 and info["success"], (task_id, info.get("failure"))
        ends = [s for s in steps if "turn_check" in s[4]]
        assert len(ends) == len(env.entries[task_id]["question"]) and all(
            s[4]["turn_reward"] == 1.0 for s in ends
        )


def first_entry_with_calls():
    return next(e for e in load_entries("multi_turn_base") if all(e["ground_truth"]))


def test_a_wrong_argument_fails_with_bfcls_state_check():
    env = BFCLMultiTurnEnv()
    entry = env.entries["multi_turn_base_0"]
    turns = ground_truth_actions(entry)
    assert entry["ground_truth"][0][1] == "mkdir(dir_name='temp')"
    turns[0][0] = turns[0][0].replace('"temp"', '"tmp"', 1)  # mkdir the wrong directory
    steps = replay(env, "multi_turn_base_0", turns)
    first_end = next(s for s in steps if "turn_check" in s[4])
    assert (
        first_end[4]["turn_check"] == "multi_turn:instance_state_mismatch"
        and first_end[4]["turn_reward"] == 0.0
    )
    assert steps[-1][2] and steps[-1][1] == 0.0 and steps[-1][4]["failure"]["turn"] == 0


def test_a_turn_without_calls_fails_and_irrelevant_calls_fail():
    env = BFCLMultiTurnEnv()
    entry = first_entry_with_calls()
    turns = ground_truth_actions(entry)
    turns[1] = ["Done."]
    steps = replay(env, entry["id"], turns)
    assert (
        steps[-1][1] == 0.0
        and steps[-1][4]["failure"]["error_type"] == "multi_turn:empty_turn_model_response"
    )
    miss = BFCLMultiTurnEnv("multi_turn_miss_param")
    entry = next(e for e in miss.entries.values() if not all(e["ground_truth"]))
    turns = ground_truth_actions(entry)
    empty = next(i for i, calls in enumerate(entry["ground_truth"]) if not calls)
    turns[empty] = [ground_truth_actions(entry)[0][0]] + turns[
        empty
    ]  # call something where BFCL expects no call
    steps = replay(miss, entry["id"], turns)
    assert (
        steps[-1][1] == 0.0
        and steps[-1][4]["failure"]["error_type"] == "multi_turn:irrelevance_error:decoder_success"
    )


def test_bad_calls_are_messages_not_crashes():
    env = BFCLMultiTurnEnv()
    obs, info = env.reset(seed=0, options={"task_id": "multi_turn_base_0"})
    assert obs.startswith("Move 'final_report.pdf' within document directory") and info["tools"]
    obs, _, _, _, info = env.step('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>')
    assert "Error during execution: unknown function 'rm_rf'" in obs and info["valid"] is False
    obs, _, _, _, info = env.step('<tool_call>{"name": "cd", "arguments": {"folder": "nowhere"}}</tool_call>')
    content = json.loads(info["tool_messages"][0]["content"])
    assert info["valid"] and content == {
        "error": "cd: 'nowhere': No such file or directory"
    }  # the API's own error result
    obs, _, _, _, info = env.step('<tool_call>{"name": "cd", "arguments": {"dir": "document"}}</tool_call>')
    assert "Error during execution:" in obs and "unexpected keyword argument 'dir'" in obs
    obs, _, _, _, info = env.step('<tool_call>{"name": "cd", </tool_call>')
    assert info["valid"] is False and "could not read your function call" in obs


def test_step_limit_per_turn_truncates_like_bfcl():
    env = BFCLMultiTurnEnv(max_steps_per_turn=3)
    env.reset(seed=0, options={"task_id": "multi_turn_base_1"})
    for _ in range(3):
        _obs, reward, term, trunc, info = env.step('<tool_call>{"name": "pwd", "arguments": {}}</tool_call>')
    assert trunc and not term and reward == 0.0 and info["failure"]["error_type"] == "step_limit"


def test_missed_functions_arrive_at_their_turn():
    env = BFCLMultiTurnEnv("multi_turn_miss_func")
    entry = env.entries["multi_turn_miss_func_0"]
    ((turn, docs),) = entry["missed_function"].items()
    _, info = env.reset(seed=0, options={"task_id": entry["id"]})
    names = {t["function"]["name"] for t in info["tools"]}
    assert not names & {d["name"] for d in docs}
    steps = replay(env, entry["id"], list(ground_truth_actions(entry))[:turn])
    assert steps[-1][0] == "I have updated some more functions you can choose from. What about now?"
    assert {d["name"] for d in docs} <= {t["function"]["name"] for t in steps[-1][4]["tools"]}


def test_schemas_and_call_parsing():
    doc = json.loads(
        '{"name": "f", "description": "d", "parameters": {"type": "dict", "properties": {"x": {"type": "float"}, '
        '"p": {"type": "tuple", "items": {"type": "integer"}}, "z": {"type": "any"}}, "required": ["x"]}}'
    )
    assert bfcl_tool_schema(doc) == {
        "type": "function",
        "function": {
            "name": "f",
            "description": "d",
            "parameters": {
                "type": "object",
                "required": ["x"],
                "properties": {
                    "x": {"type": "number"},
                    "p": {"type": "array", "items": {"type": "integer"}},
                    "z": {},
                },
            },
        },
    }
    assert parse_call("sort('a.pdf')") == ("sort", ["a.pdf"], {})
    assert parse_call("mv(source='a', destination=\"b\")") == ("mv", [], {"source": "a", "destination": "b"})
    with pytest.raises(ValueError, match="not a plain function call"):
        parse_call("os.system('ls')")
    with pytest.raises(ValueError, match="unknown BFCL category"):
        load_entries("simple")


def test_check_env_and_make():
    env = make("bfcl", category="multi_turn_base")
    check_env(env, task_id="multi_turn_base_7", other=BFCLMultiTurnEnv())
