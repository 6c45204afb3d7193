"""Where ALFWorld games live: the cache, ``ALFWORLD_DATA``, and the split folders of json_2.1.1.

Both the real data (``$ALFWORLD_DATA/json_2.1.1/{train,valid_seen,valid_unseen}``) and generated
sets use that layout, and games are found the way alfworld's ``AlfredTWEnv.collect_game_files``
finds them: a folder with ``traj_data.json`` and a ``game.tw-pddl`` marked solvable, skipping
``movable`` and ``Sliced`` trials.
"""

from __future__ import annotations

import json
import os

SPLITS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen")
# alfworld's own names for the evaluation splits
SPLIT_ALIASES = {"eval_in_distribution": "valid_seen", "eval_out_of_distribution": "valid_unseen"}
DATA_FOLDER = "json_2.1.1"


def cache_root() -> str:
    """``$AGENTRL_CACHE/alfworld``, by default ``~/.cache/agentrl/alfworld``."""
    base = os.environ.get("AGENTRL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "agentrl")
    return os.path.join(base, "alfworld")


def default_generated_dir(per_type: int = 10) -> str:
    """The cache folder of generated games with ``per_type`` games per task type and split: the
    default set (10) in ``generated``, others in ``generated-<per_type>``, so sets of different
    sizes live side by side instead of replacing each other."""
    return os.path.join(cache_root(), "generated" if per_type == 10 else f"generated-{per_type}")


def canonical_split(split: str) -> str:
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise ValueError(
            f"unknown ALFWorld split {split!r}; choose one of {list(SPLITS) + list(SPLIT_ALIASES)}"
        )
    return name


def split_dir(data_dir: str, split: str) -> str:
    """The folder of one split; ``data_dir`` may hold ``json_2.1.1`` or be it."""
    split = canonical_split(split)
    inner = os.path.join(data_dir, DATA_FOLDER)
    return os.path.join(inner if os.path.isdir(inner) else data_dir, split)


def collect_games(folder: str, task_types: tuple[str, ...] | None = None) -> list[str]:
    """Solvable ``game.tw-pddl`` paths under ``folder``, sorted (the same order everywhere)."""
    games = []
    for root, _dirs, files in os.walk(folder):
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        if "movable" in root or "Sliced" in root:
            continue
        if task_types is not None:
            with open(os.path.join(root, "traj_data.json"), encoding="utf-8") as f:
                if json.load(f).get("task_type") not in task_types:
                    continue
        game = os.path.join(root, "game.tw-pddl")
        if _solvable(game):
            games.append(game)
    return sorted(games)


def _solvable(game_file: str) -> bool:
    try:
        with open(game_file, encoding="utf-8") as f:
            return bool(json.load(f).get("solvable", False))
    except (OSError, ValueError):
        return False
