"""Prompt builders: what the policy sees at each turn.

Two ways to show history:

- ``StepPrompt`` (the default): a fresh two-message prompt per step holding the task, the last
  ``history_k`` (observation, action) pairs, the current observation and the admissible actions.
  Prompts stay short however long the episode is; every step is its own training sample.
- ``ChatPrompt``: one growing conversation (env observations as user turns, the model's
  responses as assistant turns); ``tokenize_chat`` returns its token ids and a loss mask that
  trains assistant tokens only.

Messages are plain ``{"role", "content"}`` dicts; the chat template of the tokenizer turns them
into text, so the same builders serve every model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentrl.agents.formats import get_format

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "ChatPrompt",
    "ChatTokens",
    "Message",
    "PromptSettings",
    "StepPrompt",
    "render_chat",
    "tokenize_chat",
]

Message = dict[str, Any]

DEFAULT_SYSTEM_PROMPT = (
    "You are an agent acting in a text environment. Complete the task with as few actions as possible."
)


def _system(
    system_prompt: str | None, response_format: str, tools: Sequence[dict[str, Any]] | None = None
) -> str:
    """System message: the role, the format's instructions and, for tool use, the tool schemas.

    Schemas are written into the text (one JSON object per line) rather than passed to the chat
    template, so every model, the tiny one included, sees the same prompt.
    """
    base = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    text = f"{base}\n{get_format(response_format).instructions}".strip()
    if tools:
        for i, schema in enumerate(tools):
            if not isinstance(schema, dict):
                raise ValueError(
                    f"tools[{i}] must be an OpenAI function schema (a dict), got {type(schema).__name__}"
                )
        text += "\nAvailable tools:\n" + "\n".join(
            json.dumps(t, ensure_ascii=False, sort_keys=True) for t in tools
        )
    return text


def _actions_line(admissible_actions: Sequence[str] | None) -> str | None:
    if admissible_actions is None:
        return None
    return "Admissible actions: " + (", ".join(f"[{a}]" for a in admissible_actions) or "none") + "."


@dataclass(frozen=True)
class StepPrompt:
    """Step-wise prompts: task + last ``history_k`` (observation, action) pairs + current observation.

    ``response_format`` names a registered format whose instructions go into the system message.
    With the ``hiper`` format the current subgoal is shown (``None`` before the first one).
    """

    history_k: int = 2
    response_format: str = "think_action"
    system_prompt: str | None = None
    show_admissible: bool = True
    show_step_count: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.history_k, int) or self.history_k < 0:
            raise ValueError(f"history_k must be an int >= 0, got {self.history_k!r}")
        get_format(self.response_format)

    def build(
        self,
        task: str,
        observation: str,
        history: Sequence[tuple[str, str]] = (),
        admissible_actions: Sequence[str] | None = None,
        subgoal: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[Message]:
        """The messages for the current step.

        ``history`` holds every earlier (observation, action) pair of the episode, oldest first;
        only the last ``history_k`` are shown, but the step count covers them all. ``tools``:
        OpenAI function schemas listed in the system message.
        """
        for i, pair in enumerate(history):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"history[{i}] must be an (observation, action) pair, got {pair!r}")
        shown = list(history)[max(len(history) - self.history_k, 0) :] if self.history_k else []
        lines: list[str] = []
        first_obs = history[0][0] if history else observation
        first_in_view = len(history) <= self.history_k
        if task and not (
            first_in_view and task in first_obs
        ):  # once is enough while the first observation shows it
            lines.append(f"Task: {task}")
        if self.show_step_count and history:
            lines.append(f"You have taken {len(history)} step(s) so far.")
        if shown:
            lines.append(f"Your last {len(shown)} observation(s) and action(s):")
            first = len(history) - len(shown) + 1
            for n, (obs, act) in enumerate(shown, start=first):
                lines.append(f"[Observation {n}]\n{obs}\n[Action {n}] {act}")
        lines.append(f"Current observation:\n{observation}")
        if get_format(self.response_format).subgoals:
            lines.append(f"Current subgoal: {subgoal if subgoal else 'None'}")
        actions = _actions_line(admissible_actions) if self.show_admissible else None
        if actions:
            lines.append(actions)
        return [
            {"role": "system", "content": _system(self.system_prompt, self.response_format, tools)},
            {"role": "user", "content": "\n".join(lines)},
        ]


@dataclass(frozen=True)
class ChatPrompt:
    """Full-history prompts: one conversation, observations as ``observation_role`` turns
    ("user", or "tool" for tool results after the first), responses as assistant turns."""

    response_format: str = "think_action"
    system_prompt: str | None = None
    show_admissible: bool = True
    observation_role: str = "user"

    def __post_init__(self) -> None:
        get_format(self.response_format)
        if self.observation_role not in ("user", "tool"):
            raise ValueError(f"observation_role must be 'user' or 'tool', got {self.observation_role!r}")

    def build(
        self,
        task: str,
        observations: Sequence[str],
        responses: Sequence[str] = (),
        admissible_actions: Sequence[str] | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[Message]:
        """The conversation so far (the first observation, with the task, is always a user turn).

        ``len(observations) == len(responses) + 1`` gives a prompt for the next turn (ends with a
        user message); equal lengths give a finished conversation (ends with the last response),
        which is what ``tokenize_chat`` trains on. Admissible actions are shown for the last
        observation only.
        """
        if len(observations) not in (len(responses), len(responses) + 1) or not observations:
            raise ValueError(
                f"need len(observations) == len(responses) (+1 for a prompt), got {len(observations)} observations "
                f"and {len(responses)} responses"
            )
        messages: list[Message] = [
            {"role": "system", "content": _system(self.system_prompt, self.response_format, tools)}
        ]
        for t, obs in enumerate(observations):
            parts = [f"Task: {task}"] if t == 0 and task and task not in obs else []
            parts.append(obs)
            actions = (
                _actions_line(admissible_actions)
                if self.show_admissible and t == len(observations) - 1
                else None
            )
            if actions:
                parts.append(actions)
            messages.append(
                {"role": "user" if t == 0 else self.observation_role, "content": "\n".join(parts)}
            )
            if t < len(responses):
                messages.append({"role": "assistant", "content": responses[t]})
        return messages


def render_chat(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    chat_template: str | None = None,
) -> str:
    """The chat template's text for ``messages`` (never tokenised here)."""
    if not getattr(tokenizer, "chat_template", None) and chat_template is None:
        raise ValueError(
            "the tokenizer has no chat template; pass chat_template= or use a tokenizer that has one"
        )
    return tokenizer.apply_chat_template(
        list(messages),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        chat_template=chat_template,
    )


@dataclass(frozen=True)
class ChatTokens:
    """A tokenised conversation: ``input_ids``, ``loss_mask`` (True on assistant tokens) and the
    [start, end) token span of every assistant turn."""

    input_ids: np.ndarray  # int64[T]
    loss_mask: np.ndarray  # bool[T]
    assistant_spans: tuple[tuple[int, int], ...]
    text: str


def tokenize_chat(
    tokenizer: Any, messages: Sequence[Message], *, chat_template: str | None = None
) -> ChatTokens:
    """Token ids of a whole conversation and a mask that trains assistant tokens only.

    Each assistant turn's characters are found by rendering the conversation up to it with the
    generation prompt and up to its end: the difference is what the model wrote, including the
    template's end-of-turn token (so the model learns to stop) but not the whitespace after it.
    Works with any template that renders a conversation as a prefix of its continuation.
    """
    full = render_chat(tokenizer, messages, add_generation_prompt=False, chat_template=chat_template)
    char_spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = (
            render_chat(tokenizer, messages[:i], add_generation_prompt=True, chat_template=chat_template)
            if i
            else ""
        )
        upto = render_chat(
            tokenizer, messages[: i + 1], add_generation_prompt=False, chat_template=chat_template
        )
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ValueError(
                f"the chat template does not render message {i} as a continuation of the earlier ones "
                "(it rewrites history), so assistant tokens cannot be located; use step-wise prompts with it"
            )
        end = len(upto.rstrip())
        char_spans.append((len(before), max(end, len(before))))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]], dtype=np.int64).reshape(-1)
    loss_mask = np.zeros(ids.shape[0], dtype=bool)
    token_spans = []
    for s, e in char_spans:
        inside = (starts >= s) & (starts < e)
        loss_mask |= inside
        idx = np.flatnonzero(inside)
        token_spans.append((int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0))
    return ChatTokens(input_ids=ids, loss_mask=loss_mask, assistant_spans=tuple(token_spans), text=full)


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are built, as plain settings: training (``rollout.prompt``, ``history_k``,
    ``response_format``, ``system_prompt``) and evaluation build their prompts from these, so a
    policy is evaluated on the prompts it was trained on.

    ``kind``: "step" (``StepPrompt``) or "chat" (``ChatPrompt``, which shows the whole history and
    ignores ``history_k``)."""

    kind: str = "step"
    history_k: int = 2
    response_format: str = "think_action"
    system_prompt: str | None = None
    show_admissible: bool = True  # list the env's admissible actions in the prompt

    def __post_init__(self) -> None:
        if self.kind not in ("step", "chat"):
            raise ValueError(f"prompt kind must be 'step' or 'chat', got {self.kind!r}")
        self.builder()  # checks history_k and the response format

    def builder(self) -> StepPrompt | ChatPrompt:
        if self.kind == "chat":
            return ChatPrompt(
                response_format=self.response_format,
                system_prompt=self.system_prompt,
                show_admissible=self.show_admissible,
            )
        return StepPrompt(
            history_k=self.history_k,
            response_format=self.response_format,
            system_prompt=self.system_prompt,
            show_admissible=self.show_admissible,
        )
