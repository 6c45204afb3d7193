"""ALFWorld (household tasks in text) on the real engine, with an offline game generator.

``make("alfworld", split="train")`` plays generated games (made once into the cache) or the real
``json_2.1.1`` data when ``ALFWORLD_DATA`` points at it; ``generate_games`` writes a game set;
``Expert`` is alfworld's handcoded expert with its ``move``/``put`` bug fixed.
"""

from agentrl.envs.alfworld.env import ALFWorldEnv
from agentrl.envs.alfworld.expert import Expert, ExpertGaveUp, expert_trajectories, solve
from agentrl.envs.alfworld.generate import ensure_default_games, generate_games
from agentrl.envs.alfworld.scenes import TASK_TYPES

__all__ = [
    "TASK_TYPES",
    "ALFWorldEnv",
    "Expert",
    "ExpertGaveUp",
    "ensure_default_games",
    "expert_trajectories",
    "generate_games",
    "solve",
]
