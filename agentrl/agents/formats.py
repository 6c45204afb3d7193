"""Response formats: what the model is asked to write, and parsers that turn its text into an action.

Three formats are registered in ``RESPONSE_FORMATS``:

- ``think_action``: ``<think>...</think><action>...</action>`` (think optional unless required);
- ``tool_call``: Qwen/Hermes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text or
  OpenAI JSON (``{"tool_calls": [...]}``, a list of calls, or one call); text without a call is a
  final answer;
- ``hiper``: ``<switch>KEEP|SWITCH</switch><subgoal>...</subgoal><action>...</action>``; a missing
  switch means KEEP, a missing action tag means the text left after the switch/subgoal elements
  is the action.

Parsers never raise on model output: malformed text gives ``valid=False`` with a ``reason``.
Every part found carries its character span, so the trainer can route advantages to the
tokens of that part (``agentrl.agents.spans``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.registry import Registry

__all__ = [
    "RESPONSE_FORMATS",
    "ExpertAnswer",
    "ParsedResponse",
    "ResponseFormat",
    "Span",
    "ToolCall",
    "candidate_responses",
    "check_whole_words",
    "get_format",
    "parse_hiper",
    "parse_openai_message",
    "parse_response",
    "parse_think_action",
    "parse_tool_calls",
]

Span = tuple[int, int]  # [start, end) character offsets into the response text


@dataclass(frozen=True)
class ToolCall:
    """One function call: the tool's name and its keyword arguments."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None

    def to_openai(self, index: int = 0) -> dict[str, Any]:
        """The call as an OpenAI ``tool_calls`` entry (arguments as a JSON string)."""
        return {
            "id": self.id or f"call_{index}",
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass(frozen=True)
class ParsedResponse:
    """What a response said, whether it was well-formed, and where each part sits in the text.

    ``spans`` cover each element including its tags (keys: ``think``, ``switch``, ``subgoal``,
    ``action``, ``tool_call.<i>``); ``content_spans`` cover only the stripped text inside.
    For tool calls, ``action`` spans all calls (or the whole answer when there is none).
    ``valid`` is about the format only; the env still decides whether the action is admissible.
    When ``valid`` is False, ``action`` is a best-effort extraction ("" when none was found) and
    the spans are empty (nothing is routed from a malformed response).
    """

    text: str
    action: str
    valid: bool
    reason: str | None = None
    think: str | None = None
    switch: str | None = None
    subgoal: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    spans: Mapping[str, Span] = field(default_factory=dict)
    content_spans: Mapping[str, Span] = field(default_factory=dict)

    def step_info(self, current_subgoal: str | None = None) -> dict[str, Any]:
        """Keys for ``Step.info`` that StepBatch turns into columns (switch, subgoal).

        A HiPER KEEP turn without a subgoal element keeps ``current_subgoal``. ``tool_call`` is not
        among them: a turn is a tool turn when the env answered it with a tool result (the env's
        ``info["tool_call"]``, copied by the rollout), not when the text parsed as a call.
        """
        info: dict[str, Any] = {}
        if self.switch is not None:
            info["switch"] = self.switch
            keep_old = self.subgoal is None and self.switch == "KEEP"
            info["subgoal"] = (current_subgoal if keep_old else self.subgoal) or ""
        if not self.valid:
            info["parse_error"] = self.reason
        return info


def _invalid(text: str, reason: str, **parts: Any) -> ParsedResponse:
    return ParsedResponse(text=text, action=parts.pop("action", ""), valid=False, reason=reason, **parts)


# ----------------------------------------------------------------------------- tag elements


@dataclass(frozen=True)
class _Element:
    start: int
    end: int
    content: str
    content_span: Span


def _elements(text: str, tag: str) -> list[_Element] | str:
    """Every ``<tag>...</tag>`` in ``text``, or the reason the tags are malformed."""
    opens, closes = f"<{tag}>", f"</{tag}>"
    found = [
        _element(m.start(), m.end(), m.start(1), m.end(1), text)
        for m in re.finditer(re.escape(opens) + "(.*?)" + re.escape(closes), text, flags=re.DOTALL)
    ]
    n_open, n_close = text.count(opens), text.count(closes)
    if n_open != len(found) or n_close != len(found):
        return f"unbalanced <{tag}> tags ({n_open} opening, {n_close} closing)"
    return found


def _element(start: int, end: int, c_start: int, c_end: int, text: str) -> _Element:
    raw = text[c_start:c_end]
    lead = len(raw) - len(raw.lstrip())
    content = raw.strip()
    return _Element(start, end, content, (c_start + lead, c_start + lead + len(content)))


def _single(text: str, tag: str) -> _Element | str | None:
    """The one ``<tag>`` element, None when absent, or the reason it is malformed/repeated."""
    found = _elements(text, tag)
    if isinstance(found, str):
        return found
    if len(found) > 1:
        return f"{len(found)} <{tag}> elements; expected one"
    return found[0] if found else None


def _outside(text: str, elements: Sequence[_Element]) -> str:
    """The text left after removing ``elements``."""
    pieces, pos = [], 0
    for el in sorted(elements, key=lambda e: e.start):
        pieces.append(text[pos : el.start])
        pos = el.end
    pieces.append(text[pos:])
    return "".join(pieces)


def _stripped_span(text: str, start: int, end: int) -> Span:
    raw = text[start:end]
    lead = len(raw) - len(raw.lstrip())
    return (start + lead, start + lead + len(raw.strip()))


# ----------------------------------------------------------------------------- think / action


def parse_think_action(text: str, *, require_think: bool = False, strict: bool = False) -> ParsedResponse:
    """Parse ``<think>...</think><action>...</action>``.

    Exactly one non-empty action element is required; think is optional unless
    ``require_think``; ``strict`` also rejects text outside the two elements.
    """
    if not isinstance(text, str):
        return _invalid(str(text), f"response must be text, got {type(text).__name__}")
    think = _single(text, "think")
    if isinstance(think, str):
        return _invalid(text, think)
    action = _single(text, "action")
    if isinstance(action, str):
        return _invalid(text, action)
    think_text = think.content if think else None
    if action is None:
        return _invalid(text, "no <action>...</action> element", think=think_text)
    if not action.content:
        return _invalid(text, "empty <action> element", think=think_text)
    if think is None and require_think:
        return _invalid(text, "no <think>...</think> element", think=None, action=action.content)
    if think is not None and think.start > action.start:
        return _invalid(text, "<think> must come before <action>", think=think_text, action=action.content)
    present = [e for e in (think, action) if e is not None]
    if strict and _outside(text, present).strip():
        return _invalid(
            text, "text outside the <think>/<action> elements", think=think_text, action=action.content
        )
    spans = {"action": (action.start, action.end)}
    contents = {"action": action.content_span}
    if think is not None:
        spans["think"] = (think.start, think.end)
        contents["think"] = think.content_span
    return ParsedResponse(
        text=text, action=action.content, valid=True, think=think_text, spans=spans, content_spans=contents
    )


# ----------------------------------------------------------------------------- HiPER


def parse_hiper(text: str) -> ParsedResponse:
    """Parse ``<switch>KEEP|SWITCH</switch><subgoal>...</subgoal><action>...</action>``.

    Missing switch -> KEEP. Missing action tag -> the text outside the switch/subgoal elements
    is the action. SWITCH needs a subgoal (a new segment must say what it pursues).
    """
    if not isinstance(text, str):
        return _invalid(str(text), f"response must be text, got {type(text).__name__}")
    parts: dict[str, _Element | None] = {}
    for tag in ("switch", "subgoal", "action"):
        el = _single(text, tag)
        if isinstance(el, str):
            return _invalid(text, el)
        parts[tag] = el
    switch_el, subgoal_el, action_el = parts["switch"], parts["subgoal"], parts["action"]
    switch = "KEEP"
    if switch_el is not None:
        switch = switch_el.content.upper()
        if switch not in ("KEEP", "SWITCH"):
            return _invalid(text, f"<switch> must hold KEEP or SWITCH, got {switch_el.content!r}")
    subgoal = subgoal_el.content if subgoal_el is not None else None
    spans: dict[str, Span] = {}
    contents: dict[str, Span] = {}
    for tag, el in (("switch", switch_el), ("subgoal", subgoal_el)):
        if el is not None:
            spans[tag], contents[tag] = (el.start, el.end), el.content_span
    if action_el is not None:
        action, action_span, action_content = (
            action_el.content,
            (action_el.start, action_el.end),
            action_el.content_span,
        )
    else:
        tags_end = max((el.end for el in (switch_el, subgoal_el) if el is not None), default=0)
        if _outside(text[:tags_end], [el for el in (switch_el, subgoal_el) if el is not None]).strip():
            return _invalid(
                text,
                "no <action> element and text before the <switch>/<subgoal> elements",
                switch=switch,
                subgoal=subgoal,
            )
        action_content = _stripped_span(text, tags_end, len(text))
        action, action_span = text[action_content[0] : action_content[1]], action_content
    if not action:
        return _invalid(text, "empty action", switch=switch, subgoal=subgoal)
    if switch == "SWITCH" and not subgoal:
        return _invalid(
            text, "SWITCH without a non-empty <subgoal>", switch=switch, subgoal=subgoal, action=action
        )
    spans["action"], contents["action"] = action_span, action_content
    return ParsedResponse(
        text=text,
        action=action,
        valid=True,
        switch=switch,
        subgoal=subgoal,
        spans=spans,
        content_spans=contents,
    )


# ----------------------------------------------------------------------------- tool calls


def _tool_call_from(obj: Any, where: str) -> ToolCall | str:
    """A ToolCall from ``{"name", "arguments"}`` or OpenAI's ``{"type": "function", "function": {...}}``."""
    if not isinstance(obj, dict):
        return f"{where}: expected a JSON object, got {type(obj).__name__}"
    call_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    if "function" in obj:
        obj = obj["function"]
        if not isinstance(obj, dict):
            return f"{where}: 'function' must be an object"
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return f"{where}: missing tool 'name'"
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return f"{where}: 'arguments' is not valid JSON ({e.msg})"
    if not isinstance(args, dict):
        return f"{where}: 'arguments' must be a JSON object, got {type(args).__name__}"
    return ToolCall(name=name.strip(), arguments=args, id=call_id)


def _calls_action(calls: Sequence[ToolCall]) -> str:
    """The canonical action string of a list of calls (stable JSON)."""
    return json.dumps(
        [{"name": c.name, "arguments": c.arguments} for c in calls], sort_keys=True, ensure_ascii=False
    )


def parse_tool_calls(text: str) -> ParsedResponse:
    """Parse tool calls from ``<tool_call>{...}</tool_call>`` elements or OpenAI JSON text.

    The action is the calls as canonical JSON; a response with no call is a final answer whose
    action is the stripped text. Text that starts like JSON but does not parse is invalid.
    """
    if not isinstance(text, str):
        return _invalid(str(text), f"response must be text, got {type(text).__name__}")
    found = _elements(text, "tool_call")
    if isinstance(found, str):
        return _invalid(text, found)
    if found:
        calls: list[ToolCall] = []
        for i, el in enumerate(found):
            try:
                obj = json.loads(el.content)
            except json.JSONDecodeError as e:
                return _invalid(text, f"tool call {i}: not valid JSON ({e.msg} at char {e.pos})")
            call = _tool_call_from(obj, f"tool call {i}")
            if isinstance(call, str):
                return _invalid(text, call)
            calls.append(call)
        spans = {f"tool_call.{i}": (el.start, el.end) for i, el in enumerate(found)}
        contents = {f"tool_call.{i}": el.content_span for i, el in enumerate(found)}
        spans["action"] = contents["action"] = (found[0].start, found[-1].end)
        return ParsedResponse(
            text, _calls_action(calls), True, tool_calls=tuple(calls), spans=spans, content_spans=contents
        )
    body = text.strip()
    whole = _stripped_span(text, 0, len(text))
    if body[:1] in ("{", "["):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            return _invalid(text, f"response looks like JSON but does not parse ({e.msg} at char {e.pos})")
        if isinstance(obj, dict) and "tool_calls" in obj:
            obj = obj["tool_calls"]
        items = obj if isinstance(obj, list) else [obj]
        if not items:
            return _invalid(text, "empty list of tool calls")
        calls = []
        for i, item in enumerate(items):
            call = _tool_call_from(item, f"tool call {i}")
            if isinstance(call, str):
                return _invalid(text, call)
            calls.append(call)
        return ParsedResponse(
            text,
            _calls_action(calls),
            True,
            tool_calls=tuple(calls),
            spans={"action": whole},
            content_spans={"action": whole},
        )
    if not body:
        return _invalid(text, "empty response")
    return ParsedResponse(text, body, True, spans={"action": whole}, content_spans={"action": whole})


def parse_openai_message(message: Mapping[str, Any]) -> ParsedResponse:
    """Parse an OpenAI chat-completion ``message`` (``content`` and optional ``tool_calls``).

    Spans index into ``content``; structured calls have no position in the text.
    """
    if not isinstance(message, Mapping):
        return _invalid(str(message), f"message must be a mapping, got {type(message).__name__}")
    content = message.get("content") or ""
    raw_calls = message.get("tool_calls") or []
    if not raw_calls:
        return parse_tool_calls(content if isinstance(content, str) else str(content))
    if not isinstance(raw_calls, list):
        return _invalid(str(content), "'tool_calls' must be a list")
    calls = []
    for i, item in enumerate(raw_calls):
        call = _tool_call_from(item, f"tool call {i}")
        if isinstance(call, str):
            return _invalid(str(content), call)
        calls.append(call)
    return ParsedResponse(str(content), _calls_action(calls), True, tool_calls=tuple(calls))


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ExpertAnswer:
    """What an expert answers at one turn, for ``ResponseFormat.render``: the action, the turn, the
    planner subgoal (formats with ``subgoals``) and an optional thought."""

    action: str
    turn: int = 0
    subgoal: str = "reach the goal"
    think: str | None = None


def _render_think_action(a: ExpertAnswer) -> str:
    return (f"<think>{a.think}</think>" if a.think else "") + f"<action>{a.action}</action>"


def _render_hiper(a: ExpertAnswer) -> str:
    """One subgoal for the whole episode: SWITCH to it at turn 0, KEEP it after."""
    switch = "SWITCH" if a.turn == 0 else "KEEP"
    return f"<switch>{switch}</switch><subgoal>{a.subgoal}</subgoal><action>{a.action}</action>"


def _render_tool_call(a: ExpertAnswer) -> str:
    """The action as it is: ``<tool_call>`` text for tool envs, else a final answer."""
    return a.action


def check_whole_words(words: Sequence[str]) -> None:
    """Raise ``ValueError`` unless every word is a non-empty string without outer whitespace (words a
    tiny tokenizer keeps whole: ``ResponseFormat.whole_words``, ``model.tiny.whole_words``)."""
    bad = [w for w in words if not isinstance(w, str) or not w or w != w.strip()]
    if bad:
        raise ValueError(f"whole_words must be non-empty strings without outer whitespace, got {bad}")


@dataclass(frozen=True)
class ResponseFormat:
    """A named format: the instructions that ask for it, the parser that reads it, and what the rest
    of agentrl must know about it (declared here so prompts, rollout and the benchmark never test
    a format's name).

    ``subgoals``: responses carry a planner subgoal with a SWITCH/KEEP tag; prompts show the current
    subgoal and every step records ``info["switch"]``/``info["subgoal"]``. ``fields``: the
    ``StepBatch`` columns steps in this format provide. ``min_new_tokens``: the smallest generation
    budget a well-formed response fits in (0: no floor). ``render``: writes an expert's answer in the
    format (SFT demonstrations); None when experts cannot answer in it.

    What a tiny random-init model (``model.tiny``) needs to learn the format, applied by the credit
    benchmark's warm start for this format: ``whole_words``, words of the format that its tokenizer
    keeps as one token each (``model.tiny.whole_words``); ``min_sft_epochs``, the fewest SFT epochs.
    A format that declares ``whole_words`` gets its own tiny model there, so the other formats'
    warm starts stay as they were.
    """

    name: str
    instructions: str
    parse: Callable[[str], ParsedResponse]
    stop: tuple[str, ...] = ()  # strings after which generation may stop
    subgoals: bool = False
    fields: tuple[str, ...] = ()
    min_new_tokens: int = 0
    render: Callable[[ExpertAnswer], str] | None = None  # an expert's answer as a response (SFT targets)
    whole_words: tuple[str, ...] = ()
    min_sft_epochs: int = 1

    def __post_init__(self) -> None:
        if self.min_sft_epochs < 1:
            raise ValueError(f"response format {self.name!r}: min_sft_epochs must be >= 1")
        try:
            check_whole_words(self.whole_words)
        except ValueError as e:
            raise ValueError(f"response format {self.name!r}: {e}") from None


RESPONSE_FORMATS: Registry[ResponseFormat] = Registry("response format")

RESPONSE_FORMATS.register(
    "think_action",
    ResponseFormat(
        "think_action",
        "Think briefly inside <think>...</think>, then give exactly one action inside <action>...</action>.",
        parse_think_action,
        stop=("</action>",),
        render=_render_think_action,
    ),
)
RESPONSE_FORMATS.register(
    "tool_call",
    ResponseFormat(
        "tool_call",
        'To call a tool, write <tool_call>{"name": "<tool name>", "arguments": {...}}</tool_call> '
        "(one element per call). When you have the final answer, write it as plain text.",
        parse_tool_calls,
        fields=("tool_call",),
        render=_render_tool_call,
    ),
)
RESPONSE_FORMATS.register(
    "hiper",
    ResponseFormat(
        "hiper",
        "Write <switch>KEEP</switch> to keep the current subgoal or <switch>SWITCH</switch> to start a new one, "
        "then the subgoal inside <subgoal>...</subgoal>, then exactly one action inside <action>...</action>.",
        parse_hiper,
        stop=("</action>",),
        subgoals=True,
        fields=("switch", "subgoal"),
        min_new_tokens=24,  # <switch>..</switch><subgoal>..</subgoal><action>..</action> (configs/maze_hiper.yaml)
        render=_render_hiper,
        # The maze family's tokenizer spells KEEP in bytes (K E E P), and with that constant suffix the
        # tiny model never learnt which way to go; with the tags' words as tokens it learns in the
        # second SFT epoch (docs/benchmarks.md, "HiPER's warm start").
        whole_words=("KEEP", "SWITCH"),
        min_sft_epochs=2,
    ),
)


def get_format(name: str) -> ResponseFormat:
    """The registered response format ``name`` (KeyError lists the known ones)."""
    return RESPONSE_FORMATS.get(name)


def candidate_responses(fmt: str, actions: Sequence[str], turn: int) -> list[str]:
    """The admissible ``actions`` written as responses in format ``fmt`` at ``turn``, as the choosing
    policy (``rollout.action_choice: admissible``) scores them and SFT's choice loss normalises over;
    empty for a format that cannot write an answer (``render`` is None)."""
    render = get_format(fmt).render
    return [render(ExpertAnswer(action=str(a), turn=turn)) for a in actions] if render is not None else []


def parse_response(text: str, fmt: str = "think_action") -> ParsedResponse:
    """Parse ``text`` with the registered format ``fmt``."""
    return get_format(fmt).parse(text)
