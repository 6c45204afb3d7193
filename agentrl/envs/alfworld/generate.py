"""Generate ALFWorld games offline, in the layout of the real ``json_2.1.1`` data.

``generate_games(out_dir)`` samples tasks of all six types on the floor plans shipped with
alfworld (train and valid_seen on ALFRED's training scenes, valid_unseen on its held-out ones),
writes ``out_dir/json_2.1.1/<split>/<task_type>-<Obj>-None-<Recep>-<scene>/<trial>/`` with
``game.tw-pddl`` and ``traj_data.json``, keeps only games the expert wins within 50 steps (checked
in subprocesses) and records each one's expert walkthrough. The same seed gives the same files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from agentrl.envs.alfworld import paths
from agentrl.envs.alfworld import scenes as S
from agentrl.envs.alfworld.pddl import Task, game_json, traj_data
from agentrl.envs.alfworld.sampler import sample_tasks
from agentrl.envs.alfworld.validate import Verdict, validate_games

MANIFEST = "agentrl_generation.json"
DEFAULT_PER_TYPE = 10
MAX_ROUNDS = 5


def _signature(task: Task) -> str:
    """Identity of a game regardless of its trial name (valid_seen must not repeat train)."""
    placement = sorted((o.thor_id, o.receptacle.thor_id) for o in task.objects)
    return hashlib.sha256(json.dumps([task.task_dir, task.task_desc, placement]).encode()).hexdigest()


def _scenes(split: str) -> tuple[int, ...]:
    return S.unseen_scenes() if split == "valid_unseen" else S.seen_scenes()


class _Progress:
    """tqdm when installed, else a line every 10%."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.n, self.enabled, self.desc = total, 0, enabled, desc
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="game", file=sys.stderr)
            except ImportError:
                print(f"{desc}: 0/{total}", file=sys.stderr, flush=True)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.enabled and (self.n == self.total or self.n % max(1, self.total // 10) == 0):
            print(f"{self.desc}: {self.n}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_game(folder: str, task: Task, verdict: Verdict | None) -> str:
    os.makedirs(folder, exist_ok=True)
    game_file = os.path.join(folder, "game.tw-pddl")
    with open(game_file, "w", encoding="utf-8") as f:
        json.dump(
            game_json(
                task, verdict.walkthrough if verdict else None, solvable=bool(verdict and verdict.solvable)
            ),
            f,
        )
    with open(os.path.join(folder, "traj_data.json"), "w", encoding="utf-8") as f:
        json.dump(traj_data(task), f, indent=2)
    return game_file


def _read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _check_out_dir(out_dir: str | os.PathLike[str], splits: Sequence[str]) -> None:
    ours = _read_manifest(out_dir) is not None
    for split in splits:
        d = os.path.join(out_dir, paths.DATA_FOLDER, split)
        if os.path.isdir(d) and os.listdir(d):
            if not ours:
                raise FileExistsError(
                    f"{d} already holds games that agentrl did not generate; choose an empty --out folder"
                )
            shutil.rmtree(d)


def _generate_split(
    split: str,
    per_type: int,
    seed: int,
    task_types: Sequence[str],
    staging: str,
    progress: bool,
    workers: int,
) -> tuple[dict[str, list[tuple[Task, Verdict]]], list[dict[str, str]]]:
    """Validated games of one split; depends only on (seed, split, task type), not on other splits."""
    rngs = {tt: random.Random(f"agentrl-alfworld/{seed}/{split}/{tt}") for tt in task_types}
    kept: dict[str, list[tuple[Task, Verdict]]] = {tt: [] for tt in task_types}
    seen: set[str] = set()
    dropped: list[dict[str, str]] = []
    for round_ in range(MAX_ROUNDS):
        missing = {tt: per_type - len(kept[tt]) for tt in task_types if len(kept[tt]) < per_type}
        if not missing:
            break
        candidates: list[tuple[str, Task, str]] = []
        for tt, n in missing.items():
            want = n + (max(1, n // 5) if round_ == 0 else n)  # a little slack for dropped games
            for task in sample_tasks(tt, _scenes(split), want, rngs[tt]):
                sig = _signature(task)
                if sig in seen:
                    continue
                seen.add(sig)
                folder = os.path.join(staging, split, task.task_dir, task.trial)
                candidates.append((tt, task, _write_game(folder, task, None)))
        bar = _Progress(
            len(candidates),
            f"alfworld {split}: validating games" + (f" (round {round_ + 1})" if round_ else ""),
            progress,
        )
        verdicts = validate_games(  # the callback runs inside this call, with this round's bar
            [c[2] for c in candidates],
            workers=workers,
            on_verdict=lambda _v: bar.update(),  # noqa: B023
        )
        bar.close()
        for tt, task, game_file in candidates:
            v = verdicts[game_file]
            if v.solvable and len(kept[tt]) < per_type:
                kept[tt].append((task, v))
            elif not v.solvable:
                dropped.append(
                    {"split": split, "task_type": tt, "game": f"{task.task_dir}/{task.trial}", "why": v.error}
                )
    return kept, dropped


def generate_games(
    out_dir: str | os.PathLike[str],
    per_type: int = DEFAULT_PER_TYPE,
    seed: int = 0,
    splits: Sequence[str] = paths.SPLITS,
    progress: bool = True,
    task_types: Sequence[str] = S.TASK_TYPES,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write ``per_type`` validated games per task type and split under ``out_dir``; returns a summary.

    Each split depends only on the seed, so generating splits one at a time gives the same files
    as all at once. The summary (merged into ``out_dir/agentrl_generation.json``) holds, per
    split, the parameters, the counts per task type, the sampled games the expert could not solve
    (dropped) and the wall time.
    """
    if per_type < 1:
        raise ValueError(f"per_type must be >= 1, got {per_type}")
    workers = workers or min(8, os.cpu_count() or 2)  # validation subprocesses
    splits = [paths.canonical_split(s) for s in splits]
    unknown = [t for t in task_types if t not in S.TASK_TYPES]
    if unknown:
        raise ValueError(f"unknown ALFWorld task type(s) {unknown}; choose from {list(S.TASK_TYPES)}")
    os.makedirs(out_dir, exist_ok=True)
    _check_out_dir(out_dir, splits)
    manifest = _read_manifest(out_dir) or {"out_dir": os.path.abspath(out_dir), "splits": {}}
    staging = os.path.join(out_dir, ".staging")
    summary: dict[str, Any] = {"out_dir": os.path.abspath(out_dir), "splits": {}}
    short = []
    for split in splits:
        t0 = time.time()
        shutil.rmtree(staging, ignore_errors=True)
        kept, dropped = _generate_split(split, per_type, seed, task_types, staging, progress, workers)
        shutil.rmtree(staging, ignore_errors=True)
        for _tt, games in kept.items():
            for task, verdict in games:
                _write_game(
                    os.path.join(out_dir, paths.DATA_FOLDER, split, task.task_dir, task.trial), task, verdict
                )
        counts = {tt: len(games) for tt, games in kept.items()}
        short += [f"{split}/{tt}: {n}" for tt, n in counts.items() if n < per_type]
        entry = {
            "seed": seed,
            "per_type": per_type,
            "counts": counts,
            "games": sum(counts.values()),
            "dropped": dropped,
            "seconds": round(time.time() - t0, 2),
        }
        summary["splits"][split] = manifest["splits"][split] = entry
        with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
    summary["games"] = sum(e["games"] for e in summary["splits"].values())
    if short:
        raise RuntimeError(
            f"could not generate {per_type} solvable games for {short} in {MAX_ROUNDS} rounds (see {MANIFEST})"
        )
    return summary


@contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_default_games(
    split: str, per_type: int = DEFAULT_PER_TYPE, seed: int = 0, progress: bool = True
) -> str:
    """The cached generated games of ``split`` (``per_type`` per task type), generated on first use
    (one process at a time); returns the dir."""
    split = paths.canonical_split(split)
    out_dir = paths.default_generated_dir(per_type)
    with _locked(out_dir + ".lock"):
        entry = (_read_manifest(out_dir) or {}).get("splits", {}).get(split)
        if (
            entry
            and entry["seed"] == seed
            and entry["per_type"] == per_type
            and entry["games"] == per_type * len(S.TASK_TYPES)
        ):
            return out_dir
        if progress:
            print(
                f"alfworld: generating the default {split} games into {out_dir} (once)",
                file=sys.stderr,
                flush=True,
            )
        generate_games(out_dir, per_type=per_type, seed=seed, splits=(split,), progress=progress)
    return out_dir
