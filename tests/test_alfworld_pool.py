"""ALFWorld in an EnvPool: subprocess workers on generated games, one of them SIGKILLed mid-episode."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest.importorskip(
    "alfworld", reason="needs the alfworld extra: pip install alfworld==0.4.2 'textworld[pddl]'"
)

from agentrl.envs import make
from agentrl.envs.pool import EnvPool
from tests.test_alfworld import SPLIT, alf_cache, games_dir  # noqa: F401 - shared session fixtures


@pytest.mark.slow
def test_alfworld_pool_survives_a_killed_worker(games_dir: Path) -> None:  # noqa: F811
    kwargs = {"split": SPLIT, "data_dir": str(games_dir), "expert": True}
    direct = make("alfworld", **kwargs)
    tasks = direct.task_ids()[:2]
    with EnvPool("alfworld", 2, env_kwargs=kwargs) as pool:
        resets = pool.reset(seeds=[0, 0], options=[{"task_id": t} for t in tasks])
        first = pool.step([info["expert_action"] for _, info in resets])
        os.kill(pool.pids()[0], signal.SIGKILL)
        second = pool.step([r.info["expert_action"] for r in first])
        assert second[0].truncated and "killed by signal 9" in second[0].info["error"]
        _obs, info = direct.reset(seed=0, options={"task_id": tasks[1]})
        expected = [tuple(direct.step(info["expert_action"]))]
        expected.append(tuple(direct.step(expected[0][4]["expert_action"])))
        assert [tuple(first[1]), tuple(second[1])] == expected
        assert pool.reset(indices=[0], seeds=[0], options=[{"task_id": tasks[0]}])[0] == resets[0]
    direct.close()
