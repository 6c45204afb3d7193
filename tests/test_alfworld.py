"""ALFWorld on the real engine: generated games, the env contract, the expert, validation."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip(
    "alfworld", reason="needs the alfworld extra: pip install alfworld==0.4.2 'textworld[pddl]'"
)

import alfworld.gen.constants as C

from agentrl.envs import check_env, make
from agentrl.envs.alfworld import TASK_TYPES, ALFWorldEnv, Expert, expert_trajectories
from agentrl.envs.alfworld import scenes as S
from agentrl.envs.alfworld.__main__ import main as cli_main
from agentrl.envs.alfworld.generate import MANIFEST, ensure_default_games, generate_games
from agentrl.envs.alfworld.sampler import sample_tasks
from agentrl.envs.alfworld.validate import validate_games

SPLIT = "train"


@pytest.fixture(scope="session")
def alf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private AGENTRL_CACHE while ALFWorld tests run (translations land there, not in ~/.cache)."""
    cache = tmp_path_factory.getbasetemp() / "agentrl_cache"
    before = os.environ.get("AGENTRL_CACHE")
    os.environ["AGENTRL_CACHE"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("AGENTRL_CACHE", None)
    else:
        os.environ["AGENTRL_CACHE"] = before


@pytest.fixture(scope="session")
def games_dir(alf_cache: Path) -> Path:
    """One validated game per task type: the default set, generated on first use into the session's cache."""
    return Path(ensure_default_games(SPLIT, per_type=1, progress=False))


@pytest.fixture()
def env(games_dir: Path) -> ALFWorldEnv:
    e = ALFWorldEnv(split=SPLIT, data_dir=str(games_dir))
    yield e
    e.close()


def _task_of(env: ALFWorldEnv, task_type: str) -> str:
    return next(t for t in env.task_ids() if t.startswith(task_type + "-"))


# ----------------------------------------------------------------------------- generator


def test_generated_games_use_the_original_layout(games_dir: Path) -> None:
    split = games_dir / "json_2.1.1" / SPLIT
    trials = sorted(split.glob("*/trial_T*"))
    assert len(trials) == 6
    assert sorted(p.parent.name.split("-")[0] for p in trials) == sorted(TASK_TYPES)
    for trial in trials:
        assert re.fullmatch(r"trial_T\d{8}_\d{6}_\d{6}", trial.name)
        task_type, obj, mrecep, parent, scene = trial.parent.name.split("-")
        assert mrecep == "None" and int(scene) in C.TRAIN_SCENE_NUMBERS
        game = json.loads((trial / "game.tw-pddl").read_text())
        traj = json.loads((trial / "traj_data.json").read_text())
        assert set(game) >= {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
        assert game["solvable"] is True and len(game["walkthrough"]) > 0
        assert "UNKNOWN GOAL" not in game["grammar"]
        assert traj["task_type"] == task_type
        assert traj["pddl_params"]["object_target"] == obj
        assert parent == (traj["pddl_params"]["toggle_target"] or traj["pddl_params"]["parent_target"])
        assert f"Your task is to: {traj['turk_annotations']['anns'][0]['task_desc']}." in game["grammar"]


def test_alfworld_own_loader_finds_the_games(games_dir: Path) -> None:
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    config = {
        "env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6]},
        "dataset": {"data_path": str(games_dir / "json_2.1.1" / SPLIT), "num_train_games": -1},
    }
    assert AlfredTWEnv(config, train_eval="train").num_games == 6


def test_sampled_tasks_follow_alfred_rules() -> None:
    import random

    for split_scenes, allowed in (
        (S.seen_scenes(), set(C.TRAIN_SCENE_NUMBERS)),
        (S.unseen_scenes(), set(C.TEST_SCENE_NUMBERS)),
    ):
        for task_type in TASK_TYPES:
            for task in sample_tasks(task_type, split_scenes, 8, random.Random(task_type)):
                assert task.scene.num in allowed
                assert S.room_type(task.scene.num) in C.GOALS_VALID[task_type]
                targets = [o for o in task.objects if o.cls == task.object_target]
                assert len(targets) >= (2 if task_type == "pick_two_obj_and_place" else 1)
                assert all(o.receptacle.cls != task.parent_target for o in targets), (
                    "target starts in the goal receptacle"
                )
                assert all(
                    S.can_contain(o.receptacle.cls, o.cls) for o in task.objects if o.cls not in S.LAMPS
                )
                if task_type == "look_at_obj_in_light":
                    assert any(o.cls == task.toggle_target for o in task.objects)
                else:
                    assert S.can_contain(task.parent_target, task.object_target)
                need = {
                    "pick_clean_then_place_in_recep": "SinkBasin",
                    "pick_heat_then_place_in_recep": "Microwave",
                    "pick_cool_then_place_in_recep": "Fridge",
                }.get(task_type)
                if need:
                    assert need in task.scene.receptacle_classes and task.parent_target != need
    assert not set(S.seen_scenes()) & set(S.unseen_scenes())


@pytest.mark.slow
def test_generation_is_deterministic_by_seed(alf_cache: Path, tmp_path: Path) -> None:
    def files(out: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(out)): p.read_bytes()
            for p in sorted((out / "json_2.1.1").rglob("*"))
            if p.is_file()
        }

    kw = {
        "per_type": 1,
        "splits": ("valid_unseen",),
        "task_types": ("pick_and_place_simple",),
        "progress": False,
    }
    cli = [
        "generate",
        "--out",
        str(tmp_path / "a"),
        "--per-type",
        "1",
        "--seed",
        "3",
        "--splits",
        "valid_unseen",
    ]
    assert cli_main(cli + ["--task-types", "pick_and_place_simple", "--quiet"]) == 0
    generate_games(str(tmp_path / "b"), seed=3, **kw)
    generate_games(str(tmp_path / "c"), seed=4, **kw)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 2 and a == b
    assert a != c


def test_generate_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_type"):
        generate_games(str(tmp_path / "x"), per_type=0)
    with pytest.raises(ValueError, match="split"):
        generate_games(str(tmp_path / "x"), splits=("test",))
    with pytest.raises(ValueError, match="task type"):
        generate_games(str(tmp_path / "x"), task_types=("make_coffee",))
    foreign = tmp_path / "real" / "json_2.1.1" / "train" / "some-game"
    foreign.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="did not generate"):
        generate_games(str(tmp_path / "real"), per_type=1, splits=("train",), progress=False)
    assert foreign.exists()


def test_default_set_is_generated_once_into_the_cache(alf_cache: Path, games_dir: Path) -> None:
    manifest = games_dir / MANIFEST
    stamp = manifest.stat().st_mtime_ns
    assert str(games_dir).startswith(str(alf_cache / "alfworld"))
    assert len(list(games_dir.glob(f"json_2.1.1/{SPLIT}/*/trial_T*"))) == 6
    assert ensure_default_games(SPLIT, per_type=1, progress=False) == str(games_dir)
    assert manifest.stat().st_mtime_ns == stamp  # reused, not regenerated
    assert json.loads(manifest.read_text())["splits"][SPLIT]["counts"] == dict.fromkeys(TASK_TYPES, 1)


def test_generated_sets_of_other_sizes_live_beside_the_default(alf_cache: Path, games_dir: Path) -> None:
    from agentrl.envs.alfworld import paths

    assert paths.default_generated_dir() == str(alf_cache / "alfworld" / "generated")
    assert paths.default_generated_dir(10) == paths.default_generated_dir()
    assert paths.default_generated_dir(1) == str(games_dir)  # the session's one-per-type set
    env = ALFWorldEnv(split=SPLIT, games_per_type=1)  # no data_dir: the generated set of that size
    assert env.data_dir == str(games_dir) and len(env.task_ids()) == len(TASK_TYPES)
    with pytest.raises(ValueError, match="games_per_type"):
        ALFWorldEnv(split=SPLIT, games_per_type=0)


def test_validation_drops_games_that_kill_the_planner(games_dir: Path, tmp_path: Path) -> None:
    good = sorted((games_dir / "json_2.1.1" / SPLIT).glob("pick_and_place_simple-*/trial_T*"))[0]
    bad = tmp_path / "bad-game" / "trial_T20190101_000000_000000"
    shutil.copytree(good, bad)
    game = json.loads((bad / "game.tw-pddl").read_text())
    otype = re.search(r"(\w+)Type - otype", game["pddl_problem"]).group(1)
    # a name that is both an object type and a receptacle type makes Fast Downward exit()
    game["pddl_problem"] = game["pddl_problem"].replace(
        "agent1 - agent", f"agent1 - agent\n        {otype}Type - rtype"
    )
    (bad / "game.tw-pddl").write_text(json.dumps(game))
    verdicts = validate_games([str(bad / "game.tw-pddl"), str(good / "game.tw-pddl")], workers=1)
    assert verdicts[str(bad / "game.tw-pddl")].solvable is False
    assert "died" in verdicts[str(bad / "game.tw-pddl")].error
    assert verdicts[str(good / "game.tw-pddl")].solvable is True


# ----------------------------------------------------------------------------- env


def test_check_env_passes(games_dir: Path) -> None:
    a = make("alfworld", split=SPLIT, data_dir=str(games_dir))
    b = make("alfworld", split=SPLIT, data_dir=str(games_dir))
    report = check_env(a, other=b, task_id=_task_of(a, "pick_two_obj_and_place"))
    assert report.resume == ("replay",)  # the engine's state is not copied: resumed by replay
    b.close()


def test_reset_observation_and_info(env: ALFWorldEnv) -> None:
    tid = _task_of(env, "pick_clean_then_place_in_recep")
    obs, info = env.reset(seed=0, options={"task_id": tid})
    assert obs.startswith("-= Welcome to TextWorld, ALFRED! =-")
    assert "You are in the middle of a room. Looking quickly around you, you see" in obs
    assert obs.endswith(f"Your task is to: {info['task']}.")
    assert info["state_key"] == obs
    assert info["task_type"] == "pick_clean_then_place_in_recep" and info["task_id"] == tid
    assert info["admissible_actions"] == sorted(info["admissible_actions"])
    assert all(
        a.startswith("go to ") for a in info["admissible_actions"] if a not in ("help", "inventory", "look")
    )


def test_invalid_action_is_a_noop(env: ALFWorldEnv) -> None:
    tid = _task_of(env, "pick_and_place_simple")
    _obs0, info0 = env.reset(seed=1, options={"task_id": tid})
    obs, reward, terminated, truncated, info = env.step("fly to the moon")
    assert (obs, reward, terminated, truncated) == ("Nothing happens.", 0.0, False, False)
    assert info["valid"] is False and info["success"] is False
    assert info["admissible_actions"] == info0["admissible_actions"]
    go = info0["admissible_actions"][0]
    after_noop = env.step("  " + go.upper() + " ")  # case and spacing do not matter
    assert after_noop[4]["valid"] is True
    env.reset(seed=1, options={"task_id": tid})
    direct = env.step(go)
    assert (
        after_noop[0] == direct[0] and after_noop[4]["admissible_actions"] == direct[4]["admissible_actions"]
    )


def test_group_resets_are_identical(games_dir: Path) -> None:
    a = ALFWorldEnv(split=SPLIT, data_dir=str(games_dir))
    b = ALFWorldEnv(split=SPLIT, data_dir=str(games_dir))
    first = a.reset(seed=7)
    assert b.reset(seed=7) == first  # the seed picks the same game everywhere
    tid = first[1]["task_id"]
    actions = first[1]["admissible_actions"][:3]
    run_a = [a.step(x) for x in actions]
    a.reset(seed=123, options={"task_id": tid})
    assert [a.step(x) for x in actions] == run_a == [b.step(x) for x in actions]
    a.close()
    b.close()


def test_truncation_after_max_steps(games_dir: Path) -> None:
    e = ALFWorldEnv(split=SPLIT, data_dir=str(games_dir), max_steps=3)
    e.reset(seed=0)
    outs = [e.step("look") for _ in range(3)]
    assert [o[3] for o in outs] == [False, False, True]
    assert not any(o[2] for o in outs)
    e.close()


@pytest.mark.slow
@pytest.mark.parametrize("reward_won", [1.0, 10.0])
def test_expert_solves_every_task_type(games_dir: Path, reward_won: float) -> None:
    e = ALFWorldEnv(split=SPLIT, data_dir=str(games_dir), expert=True, reward_won=reward_won)
    solved = {}
    for tid in e.task_ids():
        _obs, info = e.reset(seed=0, options={"task_id": tid})
        assert info["expert_action"] == "look"
        for _ in range(e.max_steps):
            _obs, reward, terminated, truncated, info = e.step(info["expert_action"])
            if terminated or truncated:
                break
        solved[info["task_type"]] = (terminated, info["success"], reward)
    e.close()
    assert solved == dict.fromkeys(TASK_TYPES, (True, True, reward_won))


def test_expert_trajectories_are_sft_ready(games_dir: Path, tmp_path: Path) -> None:
    from agentrl.types import read_trajectories, write_trajectories

    e = ALFWorldEnv(split=SPLIT, data_dir=str(games_dir), expert=True, reward_won=10.0)
    trajs = expert_trajectories(e, seed=0)
    with pytest.raises(ValueError, match="expert=True"):
        expert_trajectories(ALFWorldEnv(split=SPLIT, data_dir=str(games_dir)))
    e.close()
    assert sorted(t.info["task_type"] for t in trajs) == sorted(TASK_TYPES)
    for t in trajs:
        assert t.success and t.terminated and not t.truncated and t.outcome == 10.0
        assert [s.reward for s in t.steps] == [0.0] * (len(t.steps) - 1) + [10.0]
        assert t.steps[0].obs.startswith("-= Welcome") and t.steps[0].action == "look"
        assert all(s.valid and s.state_key == s.obs and s.response == s.action for s in t.steps)
    path = tmp_path / "expert.jsonl"
    write_trajectories(path, trajs)
    assert [x.to_dict() for x in read_trajectories(path)] == [x.to_dict() for x in trajs]


def _inventory_after_first_move(games_dir: Path) -> list[str]:
    e = ALFWorldEnv(split=SPLIT, data_dir=str(games_dir), expert=True)
    obs, info = e.reset(seed=0, options={"task_id": _task_of(e, "pick_two_obj_and_place")})
    expert: Expert = e._expert  # the policy's tracked inventory is what the bug left full
    while not info["expert_action"].startswith("move "):
        obs, _, terminated, _, info = e.step(info["expert_action"])
        assert not terminated
    assert len(expert._agent.policy.inventory) == 1
    obs, _, _, _, info = e.step(info["expert_action"])
    assert obs.startswith("You move the ")
    e.step(info["expert_action"])  # the tracker sees the move on the next act
    e.close()
    return list(expert._agent.policy.inventory)


def test_expert_fix_empties_the_inventory_after_move(
    games_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _inventory_after_first_move(games_dir) == []
    import agentrl.envs.alfworld.expert as expert_module

    monkeypatch.setattr(
        expert_module, "_tracker_with_move_fix", lambda track: track
    )  # alfworld 0.4.2 as shipped
    assert len(_inventory_after_first_move(games_dir)) == 1


def test_alfworld_data_env_var_loads_the_same_way(games_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALFWORLD_DATA", str(games_dir))
    e = make("alfworld", split=SPLIT)
    assert e.folder == str(games_dir / "json_2.1.1" / SPLIT) and len(e.task_ids()) == 6
    e.close()
    inner = ALFWorldEnv(
        split=SPLIT, data_dir=str(games_dir / "json_2.1.1"), task_types=["look_at_obj_in_light"]
    )
    assert [t.split("-")[0] for t in inner.task_ids()] == ["look_at_obj_in_light"]
    inner.close()


def test_env_rejects_bad_input(games_dir: Path, tmp_path: Path) -> None:
    from agentrl.envs.alfworld.paths import canonical_split

    assert canonical_split("eval_in_distribution") == "valid_seen"  # alfworld's names work too
    assert canonical_split("eval_out_of_distribution") == "valid_unseen"
    with pytest.raises(ValueError, match="unknown ALFWorld split 'test'"):
        ALFWorldEnv(split="test", data_dir=str(games_dir))
    with pytest.raises(ValueError, match="task type"):
        ALFWorldEnv(split=SPLIT, data_dir=str(games_dir), task_types=["make_coffee"])
    with pytest.raises(FileNotFoundError, match="no ALFWorld split folder"):
        ALFWorldEnv(split=SPLIT, data_dir=str(tmp_path))
    (tmp_path / "json_2.1.1" / SPLIT).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no solvable ALFWorld games"):
        ALFWorldEnv(split=SPLIT, data_dir=str(tmp_path))
    e = ALFWorldEnv(split=SPLIT, data_dir=str(games_dir))
    with pytest.raises(RuntimeError, match="before reset"):
        e.step("look")
    with pytest.raises(ValueError, match="unknown ALFWorld task_id"):
        e.reset(options={"task_id": "nope"})
    e.close()


def test_alfworld_data_is_used_only_when_it_holds_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing alfworld points ALFWORLD_DATA at its empty default cache: that must not hide the generated set."""
    from agentrl.envs.alfworld.env import real_data_dir

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    assert real_data_dir() is None
    (tmp_path / "json_2.1.1").mkdir()
    assert real_data_dir() == str(tmp_path)
    monkeypatch.delenv("ALFWORLD_DATA")
    assert real_data_dir() is None
