"""Tool use: ``@tool`` functions -> OpenAI schemas, ``ToolEnv`` (tools + tasks + reward), built-in tasks, BFCL."""

from agentrl.envs.tools.builtin import builtin_tool_env, make_tasks
from agentrl.envs.tools.env import CallRecord, Episode, ToolEnv, ToolTask, solution_action
from agentrl.envs.tools.schema import Tool, ToolArgumentError, tool


def BFCLMultiTurnEnv(**kwargs):  # noqa: N802 - a class name, imported lazily (bfcl-eval is an optional install)
    """``make("bfcl")``: BFCL v4 multi-turn tasks (see agentrl.envs.tools.bfcl)."""
    from agentrl.envs.tools.bfcl import BFCLMultiTurnEnv as cls

    return cls(**kwargs)


__all__ = ["BFCLMultiTurnEnv", "CallRecord", "Episode", "Tool", "ToolArgumentError", "ToolEnv", "ToolTask",
           "builtin_tool_env", "make_tasks", "solution_action", "tool"]
