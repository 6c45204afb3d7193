"""Tool use: @tool schemas and argument checks, ToolEnv under hostile calls, built-in tasks, the example file."""

import enum
import json
import runpy
import threading
from pathlib import Path
from typing import Literal

import pytest

from agentrl.envs import check_env, make
from agentrl.envs.tools import (
    Episode,
    ToolArgumentError,
    ToolEnv,
    ToolTask,
    builtin_tool_env,
    make_tasks,
    solution_action,
    tool,
)
from agentrl.envs.tools.builtin import builtin_reward, convert, last_number

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_tool_env.py"


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@tool
def everything(
    name: str,
    count: int,
    ratio: float,
    flags: list[bool],
    weights: dict[str, float],
    mode: Literal["fast", "slow"] = "fast",
    note: str | None = None,
    colour: Colour = Colour.RED,
    state=None,
) -> str:
    """Exercise every supported type.

    Longer explanation on a second line.

    Args:
        name: who is asking
        count (int): how many, a description
            continued on the next line
        ratio: a number
    Returns:
        text
    """
    return f"{name}:{count}:{ratio}:{state}"


def test_schema_of_every_supported_type_by_hand():
    assert everything.schema == {
        "type": "function",
        "function": {
            "name": "everything",
            "description": "Exercise every supported type. Longer explanation on a second line.",
            "parameters": {
                "type": "object",
                "required": ["name", "count", "ratio", "flags", "weights"],
                "properties": {
                    "name": {"type": "string", "description": "who is asking"},
                    "count": {
                        "type": "integer",
                        "description": "how many, a description continued on the next line",
                    },
                    "ratio": {"type": "number", "description": "a number"},
                    "flags": {"type": "array", "items": {"type": "boolean"}},
                    "weights": {"type": "object", "additionalProperties": {"type": "number"}},
                    "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                    "note": {"type": ["string", "null"], "default": None},
                    "colour": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                },
            },
        },
    }
    assert everything.wants_state and "state" not in everything.parameters["properties"]
    assert everything("a", 1, 2.0, [], {}) == "a:1:2.0:None"  # still a plain function


def test_argument_checks_convert_or_explain():
    ok = everything.check_arguments(
        {
            "name": "a",
            "count": 2,
            "ratio": 3,
            "flags": [True],
            "weights": {"x": 1},
            "colour": "blue",
            "note": None,
        }
    )
    assert (
        ok["ratio"] == 3.0
        and isinstance(ok["ratio"], float)
        and ok["colour"] is Colour.BLUE
        and ok["weights"] == {"x": 1.0}
    )
    base = {"name": "a", "count": 2, "ratio": 1.0, "flags": [], "weights": {}}
    cases = [
        ({**base, "count": True}, r"argument 'count' of 'everything' must be an integer, got bool True"),
        ({**base, "count": 2.5}, "must be an integer, got float"),
        ({**base, "ratio": "1.0"}, "argument 'ratio' of 'everything' must be a number, got str"),
        ({**base, "flags": [1]}, r"argument 'flags\[0\]' of 'everything' must be a boolean"),
        ({**base, "mode": "medium"}, r"must be one of \['fast', 'slow'\]"),
        ({**base, "colour": "green"}, r"must be one of \['red', 'blue'\]"),
        ({**base, "note": 5}, "argument 'note' of 'everything' must be"),
        ({**base, "speed": 1}, r"'everything' has no parameter\(s\) \['speed'\]"),
        ({"name": "a"}, r"missing required argument\(s\) \['count', 'ratio', 'flags', 'weights'\]"),
        ([1, 2], "arguments of 'everything' must be a JSON object, got list"),
    ]
    for args, message in cases:
        with pytest.raises(ToolArgumentError, match=message):
            everything.check_arguments(args)


def test_decorating_bad_functions_fails_clearly():
    with pytest.raises(TypeError, match="parameter 'x' has no type annotation"):
        tool(name="f")(lambda x: x)
    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs"):

        @tool
        def f(*xs: int) -> int:
            return 0

    with pytest.raises(TypeError, match="has no JSON schema"):

        @tool
        def g(x: complex) -> int:
            return 0

    with pytest.raises(ValueError, match="tool name 'bad name'"):
        tool(name="bad name")(convert.fn)


# ----------------------------------------------------------------------------- ToolEnv

RELEASE = threading.Event()
HANG_CALLS: list[threading.Thread] = []  # the thread that runs each call of `hang`


@tool
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


@tool
def hang() -> str:
    """Never returns (until the test releases it)."""
    HANG_CALLS.append(threading.current_thread())
    RELEASE.wait(30)
    return "late"


@tool
def count(fail: bool = False, state=None) -> int:
    """Count calls in this episode (a failing call counts, then raises)."""
    state["n"] += 1
    if fail:
        raise ValueError("counted, then failed")
    return state["n"]


def echo_reward(task: ToolTask, episode: Episode) -> float:
    return float(episode.answer == task.answer)


@pytest.fixture
def env():
    e = ToolEnv(
        [echo, explode, hang, count],
        [
            ToolTask("t0", "Say hi.", answer="hi", state={"n": 0}),
            ToolTask("t1", "Say bye.", answer="bye", state={"n": 0}),
        ],
        echo_reward,
        call_timeout=0.3,
        max_turns=5,
    )
    RELEASE.clear()  # a test that ran before released its hung calls
    yield e
    RELEASE.set()


def call(name, **args):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


def test_hostile_calls_become_messages_and_the_env_goes_on(env):
    env.reset(seed=0, options={"task_id": "t0"})
    hostile = [
        (call("nope"), "unknown tool 'nope'; available tools: ['count', 'echo', 'explode', 'hang']"),
        (
            '<tool_call>{"name": "echo", "arguments": {"text": </tool_call>',
            "could not read your tool call: tool call 0: not valid JSON",
        ),
        (call("echo", text=5), "argument 'text' of 'echo' must be a string, got int 5"),
        (call("explode", reason="boom"), "tool 'explode' raised RuntimeError: boom"),
    ]
    for action, message in hostile:
        obs, reward, term, _trunc, info = env.step(action)
        assert message in obs and info["valid"] is False and reward == 0.0 and not term
        env.reset(seed=0, options={"task_id": "t0"})
    calls = len(HANG_CALLS)
    obs, _, _, _, info = env.step(call("hang"))
    assert "tool 'hang' did not return within 0.3 s" in obs and info["valid"] is False
    assert len(HANG_CALLS) == calls + 1 and HANG_CALLS[-1].is_alive()  # answered while the call still runs
    obs, _, _, _, info = env.step(call("echo", text="still alive"))
    assert (
        info["valid"] and obs == '<tool_response>{"name": "echo", "content": "still alive"}</tool_response>'
    )
    obs, _, _, _, info = env.step("\n".join([call("echo", text="x")] * 10))
    assert "at most 8 calls per turn; 2 were not run" in obs and not info["valid"]


def test_openai_json_calls_state_and_final_answer(env):
    _, info = env.reset(seed=0, options={"task_id": "t0"})
    assert [s["function"]["name"] for s in info["tools"]] == ["echo", "explode", "hang", "count"]
    openai = {
        "tool_calls": [
            {"id": "c7", "type": "function", "function": {"name": "count", "arguments": "{}"}},
            {"type": "function", "function": {"name": "count", "arguments": {}}},
        ]
    }
    _obs, _, _, _, info = env.step(json.dumps(openai))
    assert info["valid"] and info["turn_reward"] == 1.0 and info["tool_call"]
    assert [m["content"] for m in info["tool_messages"]] == ["1", "2"] and info["tool_messages"][0][
        "tool_call_id"
    ] == "c7"
    _obs, reward, term, _trunc, info = env.step("hi")
    assert (
        reward == 1.0
        and term
        and info["success"]
        and info["answer"] == "hi"
        and [c.content for c in env.episode.calls] == ["1", "2"]
    )
    assert env.tasks["t0"].state == {"n": 0}  # the task's own state is never touched
    env.reset(seed=0, options={"task_id": "t0"})  # state is fresh again
    assert env.step(call("count"))[4]["tool_messages"][0]["content"] == "1"
    assert "counted, then failed" in env.step(call("count", fail=True))[0]
    assert env.step(call("count"))[4]["tool_messages"][0]["content"] == "2"  # the failed call changed nothing
    assert env.step("bye")[1] == 0.0
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("hi")


def test_truncation_and_construction_errors(env):
    env.reset(options={"task_id": "t1"})
    for _t in range(5):
        _, _, term, trunc, _ = env.step(call("echo", text="x"))
    assert trunc and not term
    with pytest.raises(ValueError, match="unknown task_id 'zz'"):
        env.reset(options={"task_id": "zz"})
    with pytest.raises(ValueError, match="duplicate task id 'a'"):
        ToolEnv([echo], [ToolTask("a", "p"), ToolTask("a", "q")], echo_reward)
    with pytest.raises(ValueError, match="two tools are named 'echo'"):
        ToolEnv([echo, echo], [ToolTask("a", "p")], echo_reward)
    with pytest.raises(TypeError, match="reward must be a function"):
        ToolEnv([echo], [ToolTask("a", "p")], 1.0)


def test_check_env_on_tool_envs(env):
    check_env(
        env,
        other=ToolEnv([echo, explode, hang, count], list(env.tasks.values()), echo_reward, call_timeout=0.3),
    )
    check_env(builtin_tool_env("all", "test", num_tasks=3))


# ----------------------------------------------------------------------------- built-in tasks


@pytest.mark.parametrize("suite", ["calculator", "units", "store"])
def test_expert_solutions_solve_every_builtin_task(suite):
    env = builtin_tool_env(suite, "test", num_tasks=30)
    for tid in env.task_ids():
        env.reset(seed=0, options={"task_id": tid})
        for turn in env.task.solution:
            obs, _, _, _, info = env.step(solution_action(turn))
            assert info["valid"], obs
        _, reward, term, _, info = env.step(env.task.final)
        assert term and reward == 1.0 and info["success"], (env.task, obs)


def test_builtin_rewards_and_tool_errors_by_hand():
    assert convert(212.0, "fahrenheit", "celsius") == pytest.approx(100.0)
    assert convert(1.0, "mile", "km") == pytest.approx(1.609344)
    assert convert(1.0, "lb", "oz") == pytest.approx(16.0)
    assert last_number("I paid $1,234.50 in total.") == 1234.5 and last_number("none") is None
    env = builtin_tool_env("calculator", "test", num_tasks=5)
    env.reset(options={"task_id": "calculator-test-0"})
    obs = env.step(call("divide", a=1, b=0))[0]
    assert "tool 'divide' raised ZeroDivisionError: division by zero" in obs
    units = builtin_tool_env("units", "test", num_tasks=1)
    units.reset(options={"task_id": "units-test-0"})
    assert (
        "cannot convert kg to m: they measure different things"
        in units.step(call("convert", value=1, from_unit="kg", to_unit="m"))[0]
    )
    store = builtin_tool_env("store", "test", num_tasks=2)
    store.reset(options={"task_id": "store-test-0"})
    task = store.task
    ((pid, qty),) = task.answer["items"].items()
    assert "the cart is empty" in store.step(call("checkout"))[0]
    store.step(call("add_to_cart", product_id=pid, quantity=qty))
    store.step(call("checkout"))
    assert store.step("I paid something.")[1] == 0.5  # right order, total not stated
    ep = Episode(answer=f"{task.answer['total']}", state={"orders": [{"items": {pid: qty + 1}}], "cart": {}})
    assert builtin_reward(task, ep) == 0.5  # wrong quantity, right total


def test_splits_differ_and_are_deterministic():
    train, test = make_tasks("calculator", "train", 20), make_tasks("calculator", "test", 20)
    assert {t.prompt for t in train}.isdisjoint({t.prompt for t in test}) and len(
        {t.prompt for t in train}
    ) == 20
    assert make_tasks("store", "train", 10) == make_tasks("store", "train", 10)
    store_test = {next(iter(t.answer["items"])) for t in make_tasks("store", "test", 40)}
    store_train = {next(iter(t.answer["items"])) for t in make_tasks("store", "train", 200)}
    assert store_test.isdisjoint(store_train)
    with pytest.raises(ValueError, match="unknown suite 'chess'"):
        make_tasks("chess")


def test_reset_info_carries_the_request_as_task(env):
    _, info = env.reset(seed=0, options={"task_id": "t1"})
    assert info["task"] == "Say bye."
    builtin = builtin_tool_env("units", "train", num_tasks=2)
    obs, info = builtin.reset(seed=0, options={"task_id": "units-train-1"})
    assert info["task"] == obs == builtin.tasks["units-train-1"].prompt
    env.step(call("echo", text="x"))
    assert "task" not in env.step(call("echo", text="y"))[4]  # only reset says it; prompts keep it from there


def test_make_tools_by_name():
    env = make("tools", suite="units", split="train", num_tasks=4)
    assert list(env.task_ids()) == [f"units-train-{i}" for i in range(4)]


# ----------------------------------------------------------------------------- docs/envs.md example


def test_docs_example_runs_verbatim_and_trains_the_right_behaviour():
    lines = EXAMPLE.read_text().splitlines()
    assert len(lines) <= 40
    runpy.run_path(str(EXAMPLE), run_name="__main__")  # runs check_env itself
    env = make("weather")
    env.reset(seed=0, options={"task_id": "Oslo-Lima"})
    env.step(call("get_temperature", city="Oslo") + call("get_temperature", city="Lima"))
    assert env.step("Lima")[1] == 1.0
    env.reset(seed=0, options={"task_id": "Oslo-Lima"})
    assert env.step("Lima")[1] == 0.0  # a guess without looking earns nothing
    env.reset(seed=0, options={"task_id": "Cairo-Oslo"})
    assert "no weather station in 'Paris'" in env.step(call("get_temperature", city="Paris"))[0]
