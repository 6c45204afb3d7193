"""Environments: the AgentEnv contract, the registry (``make``), ``check_env`` and the built-ins."""

from agentrl.envs.base import AgentEnv, FreeText
from agentrl.envs.checker import EnvCheckError, EnvSupport, check_env
from agentrl.envs.registration import gym_id, list_envs, make, register_env

register_env("maze", "agentrl.envs.maze:MazeEnv")
register_env("alfworld", "agentrl.envs.alfworld:ALFWorldEnv", gym_name="ALFWorld")
register_env("webshop", "agentrl.envs.webshop:WebShopEnv", gym_name="WebShop")
register_env("webshop-browser", "agentrl.envs.webshop:WebShopBrowserEnv", gym_name="WebShopBrowser")
register_env("search", "agentrl.envs.search:SearchEnv", gym_name="Search")
register_env("tools", "agentrl.envs.tools:builtin_tool_env", gym_name="Tools")
register_env("bfcl", "agentrl.envs.tools.bfcl:BFCLMultiTurnEnv", gym_name="BFCL")
register_env("remote", "agentrl.envs.remote:RemoteEnv", gym_name="Remote")
register_env("openenv", "agentrl.envs.openenv:OpenEnvEnv", gym_name="OpenEnv")
register_env("mcp", "agentrl.envs.mcp_env:mcp_env", gym_name="MCP")

__all__ = [
    "AgentEnv",
    "EnvCheckError",
    "EnvSupport",
    "FreeText",
    "check_env",
    "gym_id",
    "list_envs",
    "make",
    "register_env",
]
