"""Rollout on the maze with the real tiny transformer + LoRA: groups, token ids, errors that stay local."""

from __future__ import annotations

import pytest

from agentrl.agents import ChatPrompt, StepPrompt
from agentrl.envs.maze import MazeEnv, describe, outcomes, solve
from agentrl.policies import Generation, SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.rollout import ListEnvs, as_env_batch, rollout
from agentrl.types import StepBatch


@pytest.fixture(scope="module")
def policy(tiny_model):
    path = tiny_model(layers=1, hidden=32)
    return HFPolicy.from_pretrained(path, lora=LoraSettings(r=2, alpha=4), device="cpu")


PARAMS = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)


class PlanPolicy:
    """Test double for a trained model: answers ``<action>{expert action}</action>`` for the maze the
    prompt shows (looked up by the current room), tokenised with the real tiny tokenizer, so the test
    knows which actions are taken. ``bad_rooms``: rooms where it writes malformed text instead."""

    def __init__(self, tokenizer, env: MazeEnv, task_id: str, bad_rooms: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.bad_rooms = tokenizer, bad_rooms
        layout = env.layout_for(task_id)
        self.by_state: dict[str, str] = {}
        state = layout.start_state
        for action in solve(layout):
            self.by_state[describe(layout, state)] = action
            state = outcomes(layout, state, action, 0.0)[0][1]

    def prompt_ids(self, messages):
        return self.tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"][:50]

    def generate(self, prompts, params):
        out = []
        for messages in prompts:
            text = messages[-1]["content"].split("Current observation:\n")[-1]
            action = next(a for key, a in self.by_state.items() if key in text)
            room = next(line for line in text.splitlines() if line.startswith("You are in"))
            reply = "<action>oops" if any(r in room for r in self.bad_rooms) else f"<action>{action}</action>"
            ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
            out.append(Generation(self.prompt_ids(messages), ids, [-0.5] * len(ids), reply, "stop"))
        return out


def test_groups_share_initial_state_and_keep_token_ids(policy):
    envs = [MazeEnv(max_steps=20) for _ in range(4)]
    groups = rollout(
        policy, envs, ["maze-3", "maze-5"], 3, max_turns=3, params=PARAMS, seeds=[11, 12], id_prefix="it0-"
    )
    assert [g.group_id for g in groups] == ["it0-g0", "it0-g1"]
    assert [t.traj_id for t in groups[1]] == ["it0-g1-0", "it0-g1-1", "it0-g1-2"]
    for g, task in zip(groups, ["maze-3", "maze-5"]):
        assert g.task_id == task and len(g) == 3
        first = {t.steps[0].obs for t in g}
        assert len(first) == 1 and first == {t.steps[0].state_key for t in g}
        assert first.pop() == describe(MazeEnv().layout_for(task), MazeEnv().layout_for(task).start_state)
        for t in g:
            assert 1 <= len(t) <= 3 and t.info["seed"] == [11, 12][groups.index(g)]
            assert t.truncated or t.terminated
            for s in t.steps:
                assert s.prompt_ids == policy.prompt_ids(s.prompt)
                assert 1 <= len(s.response_ids) <= 6 and len(s.response_logprobs) == len(s.response_ids)
                assert all(lp <= 0 for lp in s.response_logprobs)
                assert s.response == policy.tokenizer.decode(s.response_ids, skip_special_tokens=True)
                assert s.info["format_valid"] is (s.info.get("parse_error") is None)
    # an untrained model writes mostly malformed text: recorded as invalid steps, not errors
    steps = [s for g in groups for t in g for s in t.steps]
    assert any(not s.valid for s in steps)
    assert all("error" not in t.info for g in groups for t in g)
    again = rollout(
        policy,
        [MazeEnv() for _ in range(4)],
        ["maze-3", "maze-5"],
        3,
        max_turns=3,
        params=PARAMS,
        seeds=[11, 12],
    )
    assert [s.response_ids for g in again for t in g for s in t.steps] == [s.response_ids for s in steps]
    batch = StepBatch.from_trajectories(groups)
    assert batch.num_groups == 2 and batch.num_trajectories == 6


def test_expert_actions_reach_the_goal_with_rewards_and_state_keys(policy):
    env = MazeEnv()
    plan = solve(env.layout_for("maze-7"))
    scripted = PlanPolicy(policy.tokenizer, env, "maze-7")
    (group,) = rollout(scripted, [MazeEnv(), MazeEnv()], ["maze-7"], 2, max_turns=20, params=PARAMS)
    for t in group:
        assert [s.action for s in t.steps] == plan
        assert t.terminated and not t.truncated and t.success and t.outcome == 1.0
        assert [s.reward for s in t.steps] == [0.0] * (len(plan) - 1) + [1.0]
        assert all(s.valid for s in t.steps)
        assert t.steps[1].state_key in t.steps[1].obs  # the observation acted on holds the state
    short = rollout(scripted, [MazeEnv()], ["maze-7"], 1, max_turns=2, params=PARAMS)[0].trajectories[0]
    assert len(short) == 2 and short.truncated and not short.terminated and not short.success


class FlakyMaze(MazeEnv):
    """A real maze whose step raises on the given turn (a crashing engine)."""

    def __init__(self, fail_on_turn: int, **kw) -> None:
        super().__init__(**kw)
        self.fail_on_turn, self.turns = fail_on_turn, 0

    def reset(self, **kw):
        self.turns = 0
        return super().reset(**kw)

    def step(self, action):
        self.turns += 1
        if self.turns == self.fail_on_turn:
            raise RuntimeError("engine crashed")
        return super().step(action)


def test_env_that_raises_mid_episode_only_ends_its_own_episode(policy):
    env = MazeEnv()
    scripted = PlanPolicy(policy.tokenizer, env, "maze-7")
    envs = [FlakyMaze(fail_on_turn=2), MazeEnv(), MazeEnv()]
    (group,) = rollout(scripted, envs, ["maze-7"], 3, max_turns=20, params=PARAMS)
    broken, *fine = group.trajectories
    assert broken.truncated and not broken.terminated and "engine crashed" in broken.info["error"]
    assert (
        len(broken) == 2 and "engine crashed" in broken.steps[-1].info["error"] and not broken.steps[-1].valid
    )
    assert all(t.success and "error" not in t.info for t in fine)
    batch = StepBatch.from_trajectories([group])
    assert batch.truncated.sum() == 2 and batch.success.sum() == 2 * len(fine[0])


class FailingPolicy:
    """The real tiny policy, except that prompts showing ``room`` make it raise (e.g. too long)."""

    def __init__(self, policy, room: str) -> None:
        self.policy, self.room = policy, room

    def prompt_ids(self, messages):
        return self.policy.prompt_ids(messages)

    def generate(self, prompts, params):
        if any(f"You are in the {self.room}." in m[-1]["content"] for m in prompts):
            raise ValueError(f"cannot answer in the {self.room}")
        return self.policy.generate(prompts, params)


def test_policy_error_is_recorded_and_the_other_tasks_go_on(policy):
    start_room = MazeEnv().layout_for("maze-2").start
    failing = FailingPolicy(policy, start_room)
    groups = rollout(
        failing, [MazeEnv() for _ in range(3)], ["maze-2", "maze-4"], 2, max_turns=2, params=PARAMS
    )
    for t in groups[0]:
        assert t.truncated and len(t) == 0 and f"cannot answer in the {start_room}" in t.info["error"]
    assert all(len(t) >= 1 and "error" not in t.info for t in groups[1])
    assert StepBatch.from_trajectories(groups).num_trajectories == 2  # empty episodes carry no rows


def test_malformed_hiper_output_and_reset_failure(policy):
    env = MazeEnv()
    scripted = PlanPolicy(policy.tokenizer, env, "maze-7", bad_rooms=(env.layout_for("maze-7").start,))
    builder = StepPrompt(history_k=1, response_format="hiper")
    (group,) = rollout(scripted, [MazeEnv()], ["maze-7"], 1, max_turns=3, params=PARAMS, builder=builder)
    (t,) = group.trajectories
    first = t.steps[0]
    assert not first.valid and first.info["format_valid"] is False and first.info["parse_error"]
    assert first.info["switch"] == "KEEP" and first.reward == 0.0  # the env saw an invalid no-op
    assert len(t) == 3 and t.truncated

    class NoReset(MazeEnv):
        def reset(self, **kw):
            raise OSError("no data")

    groups = rollout(policy, [NoReset(), MazeEnv()], ["maze-1"], 2, max_turns=1, params=PARAMS)
    errors = [t.info.get("error", "") for t in groups[0]]
    assert sum("reset failed: OSError: no data" in e for e in errors) >= 1


def test_chat_prompts_grow_with_the_episode(policy):
    builder = ChatPrompt(response_format="think_action")
    (group,) = rollout(policy, [MazeEnv()], ["maze-0"], 1, max_turns=3, params=PARAMS, builder=builder)
    (t,) = group.trajectories
    assert [len(s.prompt) for s in t.steps] == [2 + 2 * k for k in range(len(t))]
    for k, s in enumerate(t.steps[1:], start=1):
        assert s.prompt[2 * k]["content"] == t.steps[k - 1].response


def test_env_batch_adapters_and_bad_arguments(policy):
    assert isinstance(as_env_batch([MazeEnv()]), ListEnvs)
    with pytest.raises(TypeError, match="list of envs or a pool"):
        as_env_batch(object())
    with pytest.raises(ValueError, match="one seed per task"):
        rollout(policy, [MazeEnv()], ["maze-0"], 1, max_turns=1, params=PARAMS, seeds=[1, 2])
    with pytest.raises(ValueError, match="group_size and max_turns"):
        rollout(policy, [MazeEnv()], ["maze-0"], 0, max_turns=1, params=PARAMS)
    with pytest.raises(ValueError, match="tasks is empty"):
        rollout(policy, [MazeEnv()], [], 1, max_turns=1, params=PARAMS)


def test_env_pool_gives_the_same_episodes_as_a_list_of_envs(policy):
    from agentrl.envs.pool import EnvPool

    kwargs = {"size": 2, "n_doors": 1, "max_steps": 4}
    as_list = rollout(
        policy, [MazeEnv(**kwargs) for _ in range(3)], ["maze-1", "maze-2"], 2, max_turns=3, params=PARAMS
    )
    with EnvPool("maze", 3, env_kwargs=kwargs, backend="process") as pool:
        as_pool = rollout(policy, pool, ["maze-1", "maze-2"], 2, max_turns=3, params=PARAMS)
    flat = lambda groups: [
        (s.obs, s.response_ids, s.reward, s.valid) for g in groups for t in g for s in t.steps
    ]
    assert flat(as_pool) == flat(as_list) and len(flat(as_list)) >= 4


class CrashOnSecondStep(MazeEnv):
    """A real maze whose engine crashes on the second step of every episode."""

    def reset(self, **kw):
        self.turns = 0
        return super().reset(**kw)

    def step(self, action):
        self.turns += 1
        if self.turns == 2:
            raise RuntimeError("engine crashed")
        return super().step(action)


def test_a_pool_worker_failure_truncates_only_its_episode(policy):
    from agentrl.envs import register_env
    from agentrl.envs.pool import EnvPool

    register_env("test-crash-maze", CrashOnSecondStep)
    env = MazeEnv()
    scripted = PlanPolicy(policy.tokenizer, env, "maze-7")
    with EnvPool("test-crash-maze", 2, backend="inprocess") as pool:
        (group,) = rollout(scripted, pool, ["maze-7"], 2, max_turns=5, params=PARAMS)
    for t in group:
        assert len(t) == 2 and t.truncated and not t.terminated and "engine crashed" in t.info["error"]
        assert t.steps[0].valid and t.steps[0].info.get("error") is None


# ----------------------------------------------------------------------------- tool envs: schemas and task in the prompt


@pytest.mark.parametrize(
    "builder", [StepPrompt(history_k=1, response_format="tool_call"), ChatPrompt(response_format="tool_call")]
)
def test_tool_env_prompts_list_every_tool_schema_and_the_request(policy, builder):
    import json

    from agentrl.envs.tools import builtin_tool_env

    env = builtin_tool_env("calculator", "train", num_tasks=2)
    names = sorted(env.tools)
    assert len(names) >= 2
    (group,) = rollout(policy, [env], ["calculator-train-0"], 1, max_turns=3, params=PARAMS, builder=builder)
    (t,) = group.trajectories
    request = env.tasks["calculator-train-0"].prompt
    assert len(t) >= 1
    for k, s in enumerate(t.steps):
        system = s.prompt[0]["content"]
        listed = system.split("Available tools:\n", 1)[1].splitlines()
        assert listed == [json.dumps(schema, ensure_ascii=False, sort_keys=True) for schema in env.schemas]
        assert sorted(json.loads(line)["function"]["name"] for line in listed) == names
        user = s.prompt[1]["content"]
        assert user.count(request) == 1  # on the Task line, or in the first observation while it is in view
        assert user.startswith(f"Task: {request}\n") or (
            request in t.steps[0].obs and k <= getattr(builder, "history_k", k)
        )


class ScriptPolicy:
    """Test double for a model that writes the given replies in order (one episode at a time)."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)

    def prompt_ids(self, messages):
        return [0]

    def generate(self, prompts, params):
        return [Generation([0], [1], [0.0], self.replies.pop(0), "stop") for _ in prompts]


def test_a_bfcl_turn_that_adds_functions_updates_the_listed_tools():
    """multi_turn_miss_func: the functions withheld at reset arrive with a later user turn; the
    prompts from then on list them, and the first user turn stays the task."""
    from agentrl.envs.tools.bfcl import BFCLMultiTurnEnv, ground_truth_actions

    env = BFCLMultiTurnEnv("multi_turn_miss_func")
    entry = env.entries["multi_turn_miss_func_0"]
    (missed_turn,) = entry["missed_function"]
    replies = [a for turn in ground_truth_actions(entry) for a in turn]
    (group,) = rollout(
        ScriptPolicy(replies),
        [env],
        [entry["id"]],
        1,
        max_turns=len(replies),
        params=PARAMS,
        builder=StepPrompt(history_k=2, response_format="tool_call"),
    )
    (t,) = group.trajectories
    assert t.success and len(t) == len(replies)
    counts = [s.prompt[0]["content"].split("Available tools:\n", 1)[1].count("\n") + 1 for s in t.steps]
    first_after = next(
        k for k, s in enumerate(t.steps) if s.obs.startswith("I have updated some more functions")
    )
    assert counts[:first_after] == [len(entry["function"])] * first_after
    assert counts[first_after:] == [len(entry["function"]) + len(entry["missed_function"][missed_turn])] * (
        len(t) - first_after
    )
    first_user = "\n".join(m["content"] for m in entry["question"][0])
    assert all(s.prompt[1]["content"].count(first_user) == 1 for s in t.steps)
    assert all(s.prompt[1]["content"].startswith(f"Task: {first_user}\n") for s in t.steps[3:])


def test_tool_call_is_the_envs_answer_not_the_parsed_text():
    """``Step.info["tool_call"]`` comes from the env (it ran the call and returned its result): a
    malformed call the env rejects is False, a call the env runs is True even on the last turn
    (MT-GRPO then decides that no result follows it), and a call-shaped text sent to an env that
    runs no tools sets nothing."""
    import json

    from agentrl.envs.tools import builtin_tool_env

    env = builtin_tool_env("calculator", "train", num_tasks=2)
    call = "<tool_call>" + json.dumps({"name": sorted(env.tools)[0], "arguments": {}}) + "</tool_call>"
    replies = ["<tool_call>{not json</tool_call>", call]
    (group,) = rollout(
        ScriptPolicy(replies),
        [env],
        ["calculator-train-0"],
        1,
        max_turns=2,
        params=PARAMS,
        builder=StepPrompt(history_k=1, response_format="tool_call"),
    )
    (t,) = group.trajectories
    assert t.truncated and [s.info["tool_call"] for s in t.steps] == [False, True]
    assert StepBatch.from_trajectories([group]).tool_call.tolist() == [False, True]

    maze = MazeEnv()
    (group,) = rollout(
        ScriptPolicy([call]),
        [maze],
        ["maze-0"],
        1,
        max_turns=1,
        params=PARAMS,
        builder=StepPrompt(history_k=1, response_format="tool_call"),
    )
    assert "tool_call" not in group.trajectories[0].steps[0].info
