"""``python -m agentrl.envs.search serve|export``: run the retrieval server, or write a world to disk."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentrl.envs.search", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve POST /retrieve (Search-R1 API) over a corpus or a generated world"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8200)
    serve.add_argument(
        "--corpus", default=None, help="Search-R1 corpus JSONL ({id, contents}); default: generated world"
    )
    serve.add_argument("--world", default="synthetic", choices=("synthetic", "countryinfo"))
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--num-docs", type=int, default=10_000)
    serve.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    export = sub.add_parser("export", help="write corpus.jsonl and train/test QA files of a world")
    export.add_argument("out_dir")
    export.add_argument("--world", default="synthetic", choices=("synthetic", "countryinfo"))
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--num-docs", type=int, default=10_000)
    export.add_argument("--format", default="jsonl", choices=("jsonl", "parquet"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        from agentrl.envs.search.server import serve_retriever

        serve_retriever(
            args.host,
            args.port,
            corpus_path=args.corpus,
            world=args.world,
            seed=args.seed,
            num_docs=args.num_docs,
            token=args.token,
        )
        return 0
    if args.world == "synthetic":
        from agentrl.envs.search.world import generate_world

        world = generate_world(args.seed, args.num_docs)
    else:
        from agentrl.envs.search.realworld import countryinfo_world

        world = countryinfo_world(args.seed)
    for name, path in world.export(args.out_dir, qa_format=args.format).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
