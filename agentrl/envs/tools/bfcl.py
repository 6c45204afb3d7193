"""BFCL v4 multi-turn tasks as an env, on the stateful APIs and data shipped by ``bfcl-eval``.

Install with the ``bfcl`` extra (``pip install 'agentrl[bfcl]'``, in the lock), or with
``pip install --no-deps bfcl-eval==2026.3.23`` to keep its exact pins (numpy 1.26.4, ...) out of an
environment: the parts used here need only the standard library, and ``mpmath`` for MathAPI. Questions, ground truth,
function docs and API classes are loaded from the installed package.

An episode is one BFCL entry: a sequence of user turns. Within a turn the model calls functions
(``<tool_call>`` text or OpenAI JSON); results come back as tool messages; a response without
a call ends the turn and the next user message arrives. At the end of each turn the turn's
ground-truth calls run on a second, fresh set of API instances and BFCL's own checks compare
the two: ``state_checker`` (public attributes of every instance) and ``response_checker`` (the
ground truth's results must appear among the model's results so far); a turn whose ground truth
is empty must have no calls (BFCL's irrelevance check). Reward 1.0 at the end when every turn
passed, else 0; ``turn_reward`` is 1/0 per finished turn. More than 20 responses in one turn
(BFCL's MAXIMUM_STEP_LIMIT) truncates the episode, which fails it, as in BFCL.

``turn_rewards="matchtir"`` (for the ``matchtir`` estimator) scores every response, not only the
one that closes a user turn, by MatchTIR's bipartite match (``agentrl.envs.tools.matchtir``): a
response with calls earns the mean reward of its calls, matched together with the calls made
earlier in the same user turn against that turn's ground-truth calls (MatchTIR matches all calls
of an episode against one question's gold list; a BFCL user turn is such a question). A response
earns its reward when it is made, so earlier calls of the turn are re-matched, not frozen; a turn
whose calls all come in one response (the ground-truth replay) is matched exactly as in MatchTIR.
BFCL has no gold final answer for MatchTIR's answer F1, so the response that closes a user turn
earns BFCL's turn check (``closing_reward="check"``, 1/0) or 0 (``"zero"``, MatchTIR's reward for a
turn with neither calls nor answer); an unreadable response earns 0. ``info["call_rewards"]``
holds the rewards of the response's calls. Reward and episode outcome are unchanged.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from agentrl.agents.formats import ToolCall, parse_tool_calls
from agentrl.envs.base import AgentEnv
from agentrl.envs.tools.env import format_tool_response
from agentrl.envs.tools.matchtir import MatchReward, json_value

__all__ = [
    "CATEGORIES",
    "BFCLMultiTurnEnv",
    "bfcl_tool_schema",
    "ground_truth_actions",
    "ground_truth_calls",
    "load_entries",
    "parse_call",
]

CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
MAXIMUM_STEP_LIMIT = 20
TURN_REWARDS = ("check", "matchtir")
CLOSING_REWARDS = ("check", "zero")
ADDED_FUNCTIONS_MESSAGE = "I have updated some more functions you can choose from. What about now?"
_TYPES = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "int": "integer",
    "str": "string",
    "bool": "boolean",
    "list": "array",
}


def _package() -> Any:
    try:
        import bfcl_eval
    except ImportError as e:
        raise ImportError(
            "BFCL needs the bfcl-eval package: pip install 'agentrl[bfcl]' "
            "(or pip install --no-deps bfcl-eval==2026.3.23 to leave its pinned dependencies out)"
        ) from e
    return bfcl_eval


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@lru_cache(maxsize=4)
def load_entries(category: str = "multi_turn_base") -> tuple[dict[str, Any], ...]:
    """BFCL entries of a multi-turn category, each with its ``ground_truth`` and ``function`` docs."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; choose from {CATEGORIES}")
    root = Path(_package().__file__).parent / "data"
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    answers = {
        row["id"]: row["ground_truth"]
        for row in _read_jsonl(root / "possible_answer" / f"BFCL_v4_{category}.json")
    }
    entries = []
    for entry in _read_jsonl(root / f"BFCL_v4_{category}.json"):
        docs = [
            d
            for cls in entry["involved_classes"]
            for d in _read_jsonl(root / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[cls])
        ]
        held_back = {int(t): names for t, names in (entry.get("missed_function") or {}).items()}
        hidden = {n for names in held_back.values() for n in names}
        entry = dict(
            entry,
            ground_truth=answers[entry["id"]],
            function=[d for d in docs if d["name"] not in hidden],
            missed_function={t: [d for d in docs if d["name"] in names] for t, names in held_back.items()},
        )
        entries.append(entry)
    return tuple(entries)


def _convert_schema(schema: Any) -> Any:
    """BFCL's parameter schema in JSON-schema types ("dict" -> "object", "float" -> "number", ...)."""
    if isinstance(schema, dict):
        out = {k: _convert_schema(v) for k, v in schema.items() if k != "type"}
        t = schema.get("type")
        if isinstance(t, str) and t != "any":
            out["type"] = _TYPES.get(t, t)
        return out
    if isinstance(schema, list):
        return [_convert_schema(v) for v in schema]
    return schema


def bfcl_tool_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function doc as an OpenAI tool schema."""
    return {
        "type": "function",
        "function": {
            "name": doc["name"],
            "description": doc.get("description", ""),
            "parameters": _convert_schema(doc["parameters"]),
        },
    }


def parse_call(text: str) -> tuple[str, list[Any], dict[str, Any]]:
    """(name, positional args, keyword args) of a ground-truth call string like ``mv(source='a', destination='b')``."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {text!r}")
    if any(k.arg is None for k in node.keywords):
        raise ValueError(f"**kwargs are not supported in a ground-truth call: {text!r}")
    return (
        node.func.id,
        [ast.literal_eval(a) for a in node.args],
        {str(k.arg): ast.literal_eval(k.value) for k in node.keywords},
    )


def _result_text(value: Any) -> str:
    """BFCL's rendering of a call result: strings as they are, dicts as JSON (else str), anything else str()."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


class _APIs:
    """Fresh instances of an entry's involved classes and the public methods they expose."""

    def __init__(self, entry: dict[str, Any]) -> None:
        from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING, STATELESS_CLASSES

        long_context = "long_context" in entry["id"] or "composite" in entry["id"]
        self.instances: dict[str, Any] = {}
        self.methods: dict[str, Any] = {}
        for name in entry["involved_classes"]:
            instance = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[name]), name)()
            if name not in STATELESS_CLASSES:
                instance._load_scenario(
                    copy.deepcopy(entry["initial_config"].get(name, {})), long_context=long_context
                )
            self.instances[name] = instance
            for method_name, method in inspect.getmembers(instance, predicate=inspect.ismethod):
                if not method_name.startswith("_"):
                    self.methods[method_name] = method

    def call(self, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
        try:
            return _result_text(self.methods[name](*args, **kwargs))
        except Exception as e:
            return f"Error during execution: {e}"


def _parameter_names(entry: dict[str, Any], method: str) -> list[str]:
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    for name in entry["involved_classes"]:
        cls = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[name]), name)
        if hasattr(cls, method):
            return [p for p in inspect.signature(getattr(cls, method)).parameters if p != "self"]
    raise ValueError(f"no involved class of {entry['id']} has a method {method!r}")


def ground_truth_calls(entry: dict[str, Any]) -> list[list[tuple[str, dict[str, Any]]]]:
    """Per user turn, the ground-truth calls as (name, keyword arguments), positional arguments
    named after the method's parameters."""
    turns = []
    for calls in entry["ground_truth"]:
        items = []
        for text in calls:
            name, args, kwargs = parse_call(text)
            named = dict(zip(_parameter_names(entry, name), args)) if args else {}
            items.append((name, {**named, **kwargs}))
        turns.append(items)
    return turns


def ground_truth_actions(entry: dict[str, Any]) -> list[list[str]]:
    """Per user turn, the responses that replay the ground truth: one response with all its calls
    (positional arguments named after the method's parameters), then "Done." to end the turn."""
    turns = []
    for calls in ground_truth_calls(entry):
        action = "\n".join(
            f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>" for n, a in calls
        )
        turns.append(([action] if calls else []) + ["Done."])
    return turns


class BFCLMultiTurnEnv(AgentEnv):
    """``make("bfcl", category="multi_turn_base")``: BFCL v4 multi-turn entries, scored by BFCL's checks.

    ``turn_rewards``: "check" (BFCL's 1/0 on the response closing each user turn) or "matchtir"
    (MatchTIR's matched call rewards on every response; see the module docstring). ``matching``,
    ``unmatched_penalty``, ``sinkhorn_reg``, ``soft_normalise``: ``MatchReward``'s options;
    ``closing_reward``: what the closing response earns under "matchtir".
    """

    snapshot_fields = (
        "entry",
        "model",
        "truth",
        "functions",
        "turn",
        "_turn_steps",
        "_turn_calls",
        "_turn_preds",
        "all_model_results",
        "failure",
        "_done",
        "_last_obs",
    )
    snapshot_shared = ("entry",)  # read-only task data

    def __init__(
        self,
        category: str = "multi_turn_base",
        *,
        max_steps_per_turn: int = MAXIMUM_STEP_LIMIT,
        turn_rewards: str = "check",
        matching: str = "greedy",
        unmatched_penalty: float = 0.0,
        sinkhorn_reg: float = 0.1,
        soft_normalise: bool = False,
        closing_reward: str = "check",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if max_steps_per_turn < 1:
            raise ValueError(f"max_steps_per_turn must be >= 1, got {max_steps_per_turn}")
        for name, value, allowed in (
            ("turn_rewards", turn_rewards, TURN_REWARDS),
            ("closing_reward", closing_reward, CLOSING_REWARDS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
        self.matcher = (
            MatchReward(matching, unmatched_penalty, sinkhorn_reg, soft_normalise)
            if turn_rewards == "matchtir"
            else None
        )
        self.closing_reward = closing_reward
        self.category, self.max_steps_per_turn = category, max_steps_per_turn
        self.entries = {e["id"]: e for e in load_entries(category)}
        self._gold: dict[str, list[list[tuple[str, dict[str, Any]]]]] = {}
        self.entry: dict[str, Any] | None = None
        self._done = True

    def task_ids(self) -> Sequence[str]:
        return list(self.entries)

    def _user_message(self, turn: int) -> str:
        assert self.entry is not None
        if turn in self.entry["missed_function"]:
            self.functions += self.entry["missed_function"][turn]
            return ADDED_FUNCTIONS_MESSAGE
        return "\n".join(m["content"] for m in self.entry["question"][turn])

    def _tools(self) -> list[dict[str, Any]]:
        return [bfcl_tool_schema(d) for d in self.functions]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task_id = (options or {}).get("task_id")
        ids = list(self.entries)
        if task_id is None:
            task_id = ids[int(self.np_random.integers(len(ids)))]
        if task_id not in self.entries:
            raise ValueError(f"unknown BFCL task_id {task_id!r}; ids look like {ids[0]!r}")
        self.entry = self.entries[task_id]
        self.model, self.truth = _APIs(self.entry), _APIs(self.entry)
        self.functions = list(self.entry["function"])
        self.turn, self._turn_steps, self._turn_calls = 0, 0, 0
        self._turn_preds: list[tuple[str, dict[str, Any]]] = []  # this user turn's calls, for matchtir
        if self.matcher is not None and task_id not in self._gold:
            self._gold[task_id] = [
                [(n, {k: json_value(v) for k, v in a.items()}) for n, a in calls]
                for calls in ground_truth_calls(self.entry)
            ]
        self.all_model_results: list[str] = []
        self.failure: dict[str, Any] | None = None
        self._done = False
        self._last_obs = self._user_message(0)
        # ``task``: the first user turn, which step-wise prompts keep in view after it scrolls out of the history
        return self._last_obs, {
            "state_key": f"{task_id}#0\n{self._last_obs}",
            "task_id": task_id,
            "tools": self._tools(),
            "task": self._last_obs,
        }

    def _run(self, call: ToolCall) -> tuple[bool, str]:
        if call.name not in self.model.methods:  # as in BFCL, any public method of an involved class runs
            shown = sorted(d["name"] for d in self.functions)
            return False, f"Error during execution: unknown function {call.name!r}; available: {shown}"
        result = self.model.call(call.name, [], dict(call.arguments))
        return not result.startswith("Error during execution:"), result

    def _check_turn(self) -> dict[str, Any]:
        """BFCL's checks for the turn that just ended (its ground truth runs on the truth instances now)."""
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import response_checker, state_checker

        assert self.entry is not None
        truth_calls = self.entry["ground_truth"][self.turn]
        truth_results = [self.truth.call(*parse_call(c)) for c in truth_calls]
        if not truth_calls:
            if self._turn_calls:
                return {
                    "valid": False,
                    "error_type": "multi_turn:irrelevance_error:decoder_success",
                    "error_message": f"Model outputs valid function calls when it should not for turn {self.turn}.",
                }
            return {"valid": True}
        if not self._turn_calls:
            return {
                "valid": False,
                "error_type": "multi_turn:empty_turn_model_response",
                "error_message": f"Model response list is empty for turn {self.turn}",
            }
        result = state_checker(self.model.instances, self.truth.instances)
        if not result["valid"]:
            return result
        return response_checker(self.all_model_results, truth_results, self.turn)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.entry is None or self._done:
            raise RuntimeError("the episode is over or not started: call reset() before step()")
        parsed = parse_tool_calls(action) if isinstance(action, str) else None
        self._turn_steps += 1
        reward, terminated, truncated, turn_reward = 0.0, False, False, 0.0
        info: dict[str, Any] = {
            "task_id": self.entry["id"],
            "turn": self.turn,
            "tool_call": False,
            "success": False,
        }
        if parsed is None or not parsed.valid:
            reason = (
                parsed.reason
                if parsed is not None
                else f"the action must be text, got {type(action).__name__}"
            )
            obs = f"Error: could not read your function call: {reason}"
            info.update(valid=False, reason=reason)
        elif parsed.tool_calls:
            outcomes = [self._run(c) for c in parsed.tool_calls]
            results = [text for _, text in outcomes]
            self._turn_calls += len(results)
            self.all_model_results.extend(results)
            obs = "\n".join(format_tool_response(c.name, r) for c, r in zip(parsed.tool_calls, results))
            info.update(
                valid=all(ok for ok, _ in outcomes),
                tool_call=True,
                tool_messages=[
                    {"role": "tool", "tool_call_id": c.id or f"call_{i}", "name": c.name, "content": r}
                    for i, (c, r) in enumerate(zip(parsed.tool_calls, results))
                ],
            )
            if self.matcher is not None:
                new = [(c.name, dict(c.arguments)) for c in parsed.tool_calls]
                self._turn_preds.extend(new)
                gold = self._gold[self.entry["id"]][self.turn]
                rewards = self.matcher.call_rewards(self._turn_preds, gold)[-len(new) :]
                turn_reward = float(rewards.mean())
                info["call_rewards"] = [float(r) for r in rewards]
        else:
            check = self._check_turn()
            turn_reward = float(check["valid"])
            if self.matcher is not None and self.closing_reward == "zero":
                turn_reward = 0.0
            self._turn_preds = []
            if not check["valid"] and self.failure is None:
                self.failure = {
                    "turn": self.turn,
                    "error_type": check.get("error_type"),
                    "error_message": check.get("error_message"),
                }
            info.update(valid=True, turn_check=check.get("error_type") or "ok")
            self.turn += 1
            self._turn_steps, self._turn_calls = 0, 0
            if self.turn >= len(self.entry["question"]):
                terminated = True
                reward = float(self.failure is None)
                obs = "All turns are finished."
                info.update(success=self.failure is None, failure=self.failure)
            else:
                obs = self._user_message(self.turn)
                info["tools"] = self._tools()
        if not terminated and self._turn_steps >= self.max_steps_per_turn:
            truncated = True
            info["failure"] = {
                "turn": self.turn,
                "error_type": "step_limit",
                "error_message": f"more than {self.max_steps_per_turn} responses in turn {self.turn}",
            }
        self._done = terminated or truncated
        self._last_obs = obs
        info.update(state_key=f"{self.entry['id']}#{self.turn}\n{obs}", turn_reward=turn_reward)
        return obs, reward, terminated, truncated, info
