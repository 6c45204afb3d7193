"""``python -m agentrl.envs.webshop serve|generate|play``: the site, the catalogue files, a text session."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _play(split: str, task: str | None, data_dir: str | None, num_products: int | None, seed: int) -> None:
    """Play the text env in the terminal: type search[...] or click[...]; an empty line quits."""
    from agentrl.envs.webshop import WebShopEnv

    env = WebShopEnv(split, data_dir=data_dir, num_products=num_products, seed=seed)
    obs, info = env.reset(seed=seed, options={"task_id": task} if task is not None else None)
    print(f"[task {info['task_id']}]\n{obs}")
    while True:
        print(
            "actions:",
            ", ".join(info["admissible_actions"][:15])
            + (" ..." if len(info["admissible_actions"]) > 15 else ""),
        )
        action = input("> ").strip()
        if not action:
            return
        obs, reward, terminated, truncated, info = env.step(action)
        print(("" if info["valid"] else "(invalid action: nothing happened)\n") + obs)
        if terminated or truncated:
            print(
                f"reward {reward:.4f}  success {info['success']}" + ("  (out of steps)" if truncated else "")
            )
            return


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentrl.envs.webshop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-dir", default=None, help="folder with the original items_*.json files")
    data.add_argument("--num-products", type=int, default=None, help="catalogue size (default 1000)")
    data.add_argument("--seed", type=int, default=0, help="catalogue seed (generated catalogue only)")
    data.add_argument("--split", default="test", choices=["test", "eval", "train"])

    serve = sub.add_parser("serve", parents=[data], help="serve the shop as HTML on HOST:PORT")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)

    gen = sub.add_parser(
        "generate", help="write items_shuffle_N.json, items_ins_v2_N.json, items_human_ins.json, reviews.json"
    )
    gen.add_argument("out_dir")
    gen.add_argument("--num-products", type=int, default=1000)
    gen.add_argument("--goals-per-product", type=int, default=3)
    gen.add_argument("--seed", type=int, default=0)

    play = sub.add_parser("play", parents=[data], help="play the text env in the terminal")
    play.add_argument("--task", default=None, help="goal index (default: drawn from the split by --seed)")

    args = parser.parse_args(argv)
    if args.command == "serve":
        from agentrl.envs.webshop.site import serve as run_server

        run_server(
            host=args.host,
            port=args.port,
            split=args.split,
            num_products=args.num_products,
            data_dir=args.data_dir,
            seed=args.seed,
        )
    elif args.command == "generate":
        from agentrl.envs.webshop.catalogue import write_catalogue

        for path in write_catalogue(
            args.out_dir,
            seed=args.seed,
            num_products=args.num_products,
            goals_per_product=args.goals_per_product,
        ):
            print(path)
    else:
        _play(args.split, args.task, args.data_dir, args.num_products, args.seed)


if __name__ == "__main__":
    main()
