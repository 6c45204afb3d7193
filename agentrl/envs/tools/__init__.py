"""Tool use: ``@tool`` functions -> OpenAI schemas, ``ToolEnv`` (tools + tasks + reward), built-in tasks, BFCL.

``BFCLMultiTurnEnv`` needs the ``bfcl`` extra (``bfcl-eval``) when it is made (not on import).
"""

from agentrl.envs.tools.bfcl import BFCLMultiTurnEnv
from agentrl.envs.tools.builtin import builtin_tool_env, make_tasks
from agentrl.envs.tools.env import CallRecord, Episode, ToolEnv, ToolTask, solution_action
from agentrl.envs.tools.schema import Tool, ToolArgumentError, tool

__all__ = [
    "BFCLMultiTurnEnv",
    "CallRecord",
    "Episode",
    "Tool",
    "ToolArgumentError",
    "ToolEnv",
    "ToolTask",
    "builtin_tool_env",
    "make_tasks",
    "solution_action",
    "tool",
]
