"""``@tool``: a plain typed Python function becomes an OpenAI function schema and a checked callable.

The schema comes from the signature (types, defaults) and the docstring (the summary becomes the
description, a Google-style ``Args:`` section describes each parameter). Arguments from a model
are checked against the annotations before the call, so a wrong type is a clear message rather
than an exception deep inside the tool. A parameter named ``state`` is not shown to the model:
``ToolEnv`` passes the episode's state object there.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["STATE_PARAM", "Tool", "ToolArgumentError", "tool"]

STATE_PARAM = "state"
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class ToolArgumentError(ValueError):
    """Arguments from the model do not fit the tool's signature; the message says which and why."""


def _json_schema(ann: Any, where: str) -> dict[str, Any]:
    """JSON schema of a Python annotation (str, int, float, bool, list[T], dict[str, T], Literal, Enum, Optional)."""
    if ann in _SIMPLE:
        return {"type": _SIMPLE[ann]}
    if ann is Any:
        return {}
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return _literal_schema([m.value for m in ann])
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return _literal_schema(list(args))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        schemas = [_json_schema(a, where) for a in inner]
        nullable = len(inner) < len(args)
        if len(schemas) == 1 and set(schemas[0]) == {"type"} and nullable:
            return {"type": [schemas[0]["type"], "null"]}
        return {"anyOf": schemas + ([{"type": "null"}] if nullable else [])}
    if origin in (list, tuple, Sequence, set, frozenset) or ann in (list, tuple):
        return {"type": "array", "items": _json_schema(args[0], where)} if args else {"type": "array"}
    if origin in (dict, Mapping) or ann is dict:
        if args and args[0] is not str:
            raise TypeError(f"{where}: dict keys must be str for a JSON tool schema, got {args[0]!r}")
        return (
            {"type": "object", "additionalProperties": _json_schema(args[1], where)}
            if args
            else {"type": "object"}
        )
    raise TypeError(
        f"{where}: annotation {ann!r} has no JSON schema; use str, int, float, bool, list[...], dict[str, ...], "
        "Literal[...], an Enum or Optional[...]"
    )


def _literal_schema(values: list[Any]) -> dict[str, Any]:
    kinds = {_SIMPLE.get(type(v)) for v in values}
    schema: dict[str, Any] = {"enum": values}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    return schema


def _conform(value: Any, ann: Any, path: str, tool_name: str) -> Any:
    """``value`` checked against ``ann`` (ints are accepted for floats and converted); raises ToolArgumentError."""

    def fail(expected: str) -> ToolArgumentError:
        return ToolArgumentError(
            f"argument '{path}' of {tool_name!r} must be {expected}, got {type(value).__name__} {_short(value)}"
        )

    if ann is Any:
        return value
    if ann is bool:
        if not isinstance(value, bool):
            raise fail("a boolean")
        return value
    if ann is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if ann is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if ann is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if ann is type(None):
        if value is not None:
            raise fail("null")
        return None
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        for m in ann:
            if m.value == value:
                return m
        raise fail(f"one of {[m.value for m in ann]}")
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise fail(f"one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _conform(value, a, path, tool_name)
            except ToolArgumentError:
                continue
        raise fail(" or ".join(_describe(a) for a in args))
    if origin in (list, tuple, Sequence, set, frozenset) or ann in (list, tuple):
        if not isinstance(value, list):
            raise fail("an array")
        item = args[0] if args else Any
        out = [_conform(v, item, f"{path}[{i}]", tool_name) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping) or ann is dict:
        if not isinstance(value, dict):
            raise fail("an object")
        inner = args[1] if args else Any
        return {k: _conform(v, inner, f"{path}[{k!r}]", tool_name) for k, v in value.items()}
    raise fail(_describe(ann))


def _describe(ann: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", type(None): "null"}.get(
        ann, str(ann)
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section, current = None, None
    for line in lines:
        stripped = line.strip()
        if re.fullmatch(r"(Args|Arguments|Parameters|Returns|Raises|Example|Examples):", stripped):
            section, current = stripped[:-1], None
            continue
        if section is None:
            summary.append(stripped)
        elif section in ("Args", "Arguments", "Parameters"):
            m = re.match(r"(\w+)\s*(\([^)]*\))?\s*:\s*(.*)", stripped)
            if m and not line.startswith(" " * 8):
                current = m.group(1)
                params[current] = m.group(3).strip()
            elif current and stripped:
                params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(s for s in summary if s).strip(), params


@dataclass(frozen=True, eq=False)
class Tool:
    """A function the model may call: its OpenAI ``schema`` and the checked ``invoke``."""

    fn: Callable[..., Any]
    name: str
    description: str
    parameters: Mapping[str, Any]
    annotations: Mapping[str, Any]
    required: tuple[str, ...]
    wants_state: bool

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema (``{"type": "function", "function": {...}}``)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }

    def check_arguments(self, arguments: Any) -> dict[str, Any]:
        """The arguments converted to the annotated types, or ToolArgumentError naming what is wrong."""
        if not isinstance(arguments, dict):
            raise ToolArgumentError(
                f"arguments of {self.name!r} must be a JSON object, got {type(arguments).__name__}"
            )
        unknown = sorted(set(arguments) - set(self.annotations))
        if unknown:
            raise ToolArgumentError(
                f"{self.name!r} has no parameter(s) {unknown}; it takes {sorted(self.annotations)}"
            )
        missing = [p for p in self.required if p not in arguments]
        if missing:
            raise ToolArgumentError(f"{self.name!r} is missing required argument(s) {missing}")
        return {k: _conform(v, self.annotations[k], k, self.name) for k, v in arguments.items()}

    def invoke(self, arguments: Any, state: Any = None) -> Any:
        """Check the arguments, then call the function (with ``state`` when it asks for it)."""
        kwargs = self.check_arguments(arguments)
        if self.wants_state:
            kwargs[STATE_PARAM] = state
        return self.fn(**kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _make_tool(fn: Callable[..., Any], name: str | None, description: str | None) -> Tool:
    if not callable(fn):
        raise TypeError(f"@tool needs a function, got {type(fn).__name__}")
    tool_name = name or fn.__name__
    if not _NAME.fullmatch(tool_name):
        raise ValueError(f"tool name {tool_name!r} must match {_NAME.pattern}")
    hints = typing.get_type_hints(fn)
    summary, param_docs = _parse_docstring(fn.__doc__)
    props: dict[str, Any] = {}
    annotations: dict[str, Any] = {}
    required: list[str] = []
    wants_state = False
    for p in inspect.signature(fn).parameters.values():
        if p.name == STATE_PARAM:
            wants_state = True
            continue
        where = f"tool {tool_name!r}, parameter {p.name!r}"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{where}: *args/**kwargs cannot be described by a schema")
        if p.name not in hints:
            raise TypeError(f"{where} has no type annotation")
        schema = _json_schema(hints[p.name], where)
        if p.name in param_docs:
            schema["description"] = param_docs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif isinstance(p.default, (str, int, float, bool, type(None))):
            schema["default"] = p.default
        elif isinstance(p.default, enum.Enum):
            schema["default"] = p.default.value
        props[p.name] = schema
        annotations[p.name] = hints[p.name]
    parameters = {"type": "object", "properties": props, "required": required}
    return Tool(
        fn,
        tool_name,
        description if description is not None else summary,
        parameters,
        annotations,
        tuple(required),
        wants_state,
    )


@typing.overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@typing.overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorator: ``@tool`` or ``@tool(name=..., description=...)`` turns a typed function into a Tool."""
    if fn is not None:
        return _make_tool(fn, name, description)
    return lambda f: _make_tool(f, name, description)
