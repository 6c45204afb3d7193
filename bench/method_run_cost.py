"""Where the time of a training run goes, phase by phase: the cost of one method run of the learning
benchmark (``agentrl bench credit --part learning``) at a size that takes a minute or two.

Each repeat is a fresh interpreter (``--child``) that trains ``configs/quickstart.yaml`` with the
learning benchmark's one torch thread, ``--iterations`` RL iterations and a reduced held-out
evaluation, from ``--model`` (a warm start, as the benchmark's method runs) or after a short SFT. It
reports wall and CPU seconds of: process start (Python + torch/transformers/peft imports), setup
(envs, tiny model, policy, learner; SFT excluded), SFT, the evaluation before RL, the rollouts, the
updates (samples, scoring, PPO epochs, trajectory files), checkpoints, the evaluation after RL. The
last lines scale the rates to a full method run (50 iterations, 1000 evaluation episodes after RL;
the benchmark shares the warm start's evaluation before RL and builds SFT once per seed).

Times only: nothing is asserted. On a shared machine wall times move with the other work; the
process's CPU seconds much less (one torch thread), so compare those, and take ranges over
``--repeats``. ``--pycache DIR``: let the child write and read a bytecode cache there
(``PYTHONPYCACHEPREFIX``, with ``PYTHONDONTWRITEBYTECODE`` unset): the process start with compiled
bytecode (what ``make install`` now writes) on a machine that sets ``PYTHONDONTWRITEBYTECODE``.

    .venv/bin/python bench/method_run_cost.py                 # 2 repeats, 5 iterations, SFT on 200 tasks
    .venv/bin/python bench/method_run_cost.py --model runs/quickstart/sft-model --iterations 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# "other": what the named phases leave of the total (metrics, trajectory files, the summary, exit)
PHASES = (
    "start",
    "setup",
    "sft",
    "eval_before",
    "rollout",
    "update",
    "checkpoint",
    "eval_after",
    "other",
    "total",
)


def child(args: argparse.Namespace) -> None:
    """One run in this interpreter; prints its phase seconds (wall, and CPU of this process) as JSON."""
    launched = float(os.environ["METHOD_RUN_COST_LAUNCHED"])
    import peft  # noqa: F401  (everything a run imports, timed as the process start)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import agentrl.trainers.loop as loop

    wall: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    cpu: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    wall["start"], cpu["start"] = time.time() - launched, time.process_time()

    def timed(obj: Any, name: str, key: str | None = None) -> None:
        inner = getattr(obj, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0, c0 = time.time(), time.process_time()
            try:
                return inner(*a, **k)
            finally:  # evaluations are keyed by their name ("before", "after")
                phase = key or f"eval_{a[1] if len(a) > 1 else k.get('name')}"
                wall[phase] += time.time() - t0
                cpu[phase] += time.process_time() - c0

        setattr(obj, name, wrapper)

    timed(loop.Trainer, "_sft", "sft")
    timed(loop.Trainer, "_evaluate")
    timed(loop.Trainer, "_rollout", "rollout")
    timed(loop.Trainer, "_learn", "update")
    timed(loop, "save_checkpoint", "checkpoint")
    warm = [f"model.path={args.model}", "sft.enabled=false"] if args.model else []
    overrides = [
        "model.torch_threads=1",
        f"optim.iterations={args.iterations}",
        f"sft.tasks.count={args.sft_tasks}",
        f"eval.tasks.count={args.eval_tasks}",
        "logging.checkpoint_every=5",
        *warm,
        *args.overrides,
    ]
    trainer = loop.Trainer.from_config(ROOT / "configs" / "quickstart.yaml", args.out, overrides)
    t0, c0 = time.time(), time.process_time()
    trainer.setup()
    wall["setup"], cpu["setup"] = time.time() - t0 - wall["sft"], time.process_time() - c0 - cpu["sft"]
    trainer.train()
    wall["total"], cpu["total"] = time.time() - launched, time.process_time()
    for d in (wall, cpu):
        d["other"] = d["total"] - sum(d[k] for k in PHASES if k not in ("other", "total"))
    info = {
        "iterations": trainer.cfg.optim.iterations,
        "eval_episodes": trainer.cfg.eval.tasks.count * trainer.cfg.eval.episodes_per_task,
    }
    print(json.dumps({"wall": wall, "cpu": cpu, **info}))


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f}-{hi:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="more key=value overrides of configs/quickstart.yaml")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--sft-tasks", type=int, default=200, help="SFT tasks (the benchmark: 1600)")
    p.add_argument(
        "--eval-tasks", type=int, default=40, help="held-out tasks x 5 episodes (the benchmark: 200)"
    )
    p.add_argument(
        "--model",
        help="a warm start to train from, e.g. a run's sft-model (the benchmark's method runs start from "
        "their seed's); default: the tiny model, SFT here on --sft-tasks tasks",
    )
    p.add_argument("--pycache", help="a bytecode cache folder for the child (PYTHONPYCACHEPREFIX)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    runs = []
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="method-run-cost-") as tmp:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
            if args.pycache:
                env["PYTHONPYCACHEPREFIX"] = str(Path(args.pycache).resolve())
                env.pop("PYTHONDONTWRITEBYTECODE", None)
            cmd = [sys.executable, __file__, "--child", "--out", str(Path(tmp) / "run")]
            cmd += ["--iterations", str(args.iterations), "--sft-tasks", str(args.sft_tasks)]
            cmd += ["--eval-tasks", str(args.eval_tasks), *args.overrides]
            cmd += ["--model", str(Path(args.model).resolve())] if args.model else []
            env["METHOD_RUN_COST_LAUNCHED"] = repr(time.time())
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"repeat {k + 1} failed:\n{out.stderr[-4000:]}")
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(run)
            print(
                f"repeat {k + 1} (wall s / CPU s): "
                + ", ".join(f"{ph} {run['wall'][ph]:.1f}/{run['cpu'][ph]:.1f}" for ph in PHASES),
                flush=True,
            )
    n_it, n_ep = runs[0]["iterations"], runs[0]["eval_episodes"]
    print(f"\nseconds, min-max over {len(runs)} repeats; {n_it} iterations, {n_ep} evaluation episodes")
    print(f"  {'phase':12s} {'wall':>15s} {'CPU':>15s}")
    for ph in PHASES:
        print(
            f"  {ph:12s} {_range([r['wall'][ph] for r in runs]):>15s} {_range([r['cpu'][ph] for r in runs]):>15s}"
        )
    for kind in ("wall", "cpu"):
        full = [
            r[kind]["start"]
            + r[kind]["setup"]
            + 50 * (r[kind]["rollout"] + r[kind]["update"] + r[kind]["checkpoint"]) / max(n_it, 1)
            + 1000 * r[kind]["eval_after"] / max(n_ep, 1)
            for r in runs
        ]
        print(
            f"a full method run ({kind}: start + setup + 50 iterations + 1000 evaluation episodes after RL), "
            f"scaled; rough, as rows per iteration change while the policy learns: {_range(full).strip()} s"
        )


if __name__ == "__main__":
    main()
