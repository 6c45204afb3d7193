"""``python -m agentrl.envs.alfworld generate --out DIR --per-type N`` (and ``play`` a game)."""

from __future__ import annotations

import argparse
import json
import sys

from agentrl.envs.alfworld.generate import DEFAULT_PER_TYPE, generate_games
from agentrl.envs.alfworld.paths import SPLITS
from agentrl.envs.alfworld.scenes import TASK_TYPES


def _play(args: argparse.Namespace) -> int:
    from agentrl.envs.alfworld.env import ALFWorldEnv

    env = ALFWorldEnv(split=args.split, data_dir=args.data_dir, max_steps=args.max_steps)
    obs, info = env.reset(seed=args.seed, options={"task_id": args.task_id} if args.task_id else None)
    print(f"[{info['task_id']}]\n\n{obs}")
    while True:
        print("\nadmissible: " + " | ".join(info["admissible_actions"]))
        try:
            action = input("> ")
        except EOFError:
            return 0
        if action.strip() in ("quit", "exit"):
            return 0
        obs, reward, terminated, truncated, info = env.step(action)
        print(obs)
        if terminated or truncated:
            print(f"\n{'won' if info['success'] else 'out of steps'} (reward {reward})")
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentrl.envs.alfworld")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate validated games in the json_2.1.1 layout")
    gen.add_argument("--out", required=True, help="output folder (json_2.1.1/<split>/... is written inside)")
    gen.add_argument("--per-type", type=int, default=DEFAULT_PER_TYPE, help="games per task type and split")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    gen.add_argument(
        "--task-types",
        nargs="+",
        default=list(TASK_TYPES),
        choices=list(TASK_TYPES),
        metavar="TYPE",
        help="only these task types (default: all six)",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    play = sub.add_parser("play", help="play a game in the terminal")
    play.add_argument("--split", default="valid_seen")
    play.add_argument("--data-dir", default=None)
    play.add_argument("--task-id", default=None)
    play.add_argument("--seed", type=int, default=0)
    play.add_argument("--max-steps", type=int, default=50)
    args = parser.parse_args(argv)
    if args.command == "play":
        return _play(args)
    summary = generate_games(
        args.out,
        per_type=args.per_type,
        seed=args.seed,
        splits=tuple(args.splits),
        progress=not args.quiet,
        task_types=tuple(args.task_types),
    )
    json.dump(
        {s: {k: e[k] for k in ("counts", "games", "seconds")} for s, e in summary["splits"].items()},
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
