"""A sampled ALFRED task and its rendering as ALFWorld game files (PDDL problem, grammar, traj_data).

The files follow what alfworld's loader and TextWorld's PDDL backend read from the real
``json_2.1.1`` data: ``game.tw-pddl`` is JSON with ``pddl_domain``, ``grammar`` (alfred.twl2 with
the task sentence in place of ``UNKNOWN GOAL``), ``pddl_problem``, ``solvable`` and
``walkthrough``; ``traj_data.json`` carries ``task_type`` and ``pddl_params``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import alfworld
import alfworld.gen.goal_library as glib

from agentrl.envs.alfworld import scenes as S


@dataclass(frozen=True)
class PlacedObject:
    thor_id: str
    cls: str
    receptacle: S.Receptacle


@dataclass
class Task:
    """One game: a scene, where every object starts, and the goal."""

    task_type: str
    scene: S.Scene
    objects: list[PlacedObject]
    object_target: str
    parent_target: str = ""  # goal receptacle class ("" for look_at_obj_in_light)
    toggle_target: str = ""  # lamp class for look_at_obj_in_light
    task_desc: str = ""
    trial: str = ""  # "trial_T20190907_212755_456877"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def task_dir(self) -> str:
        """ALFRED's folder name: ``{task_type}-{object}-{mrecep}-{parent or toggle}-{scene}``."""
        parent = self.parent_target or self.toggle_target
        return f"{self.task_type}-{self.object_target}-None-{parent}-{self.scene.num}"

    @property
    def pddl_params(self) -> dict[str, Any]:
        return {
            "object_target": self.object_target,
            "parent_target": self.parent_target,
            "mrecep_target": "",
            "toggle_target": self.toggle_target,
            "object_sliced": False,
        }


def mangle(thor_id: str) -> str:
    """AI2-THOR id -> PDDL name, as in ALFWorld's data ("Apple|-01.75|..." -> "Apple_bar__minus_01_dot_75...")."""
    return (
        thor_id.replace("|", "_bar_")
        .replace("-", "_minus_")
        .replace("+", "_plus_")
        .replace(".", "_dot_")
        .replace(",", "_comma_")
    )


def _loc(location: str) -> str:
    return mangle(location)


@lru_cache(maxsize=1)
def domain_text() -> str:
    with open(os.path.join(os.path.dirname(alfworld.__file__), "data", "alfred.pddl"), encoding="utf-8") as f:
        return f.read()


@lru_cache(maxsize=1)
def grammar_template() -> str:
    with open(os.path.join(os.path.dirname(alfworld.__file__), "data", "alfred.twl2"), encoding="utf-8") as f:
        return f.read()


def task_templates(task_type: str) -> list[str]:
    return list(glib.gdict[task_type]["templates"])


def fill_template(template: str, task: Task) -> str:
    return template.format(
        obj=task.object_target.lower(),
        recep=task.parent_target.lower(),
        toggle=task.toggle_target.lower(),
        mrecep="",
    )


def problem_text(task: Task) -> str:
    """The PDDL problem: objects, initial facts and ALFRED's goal for the task type."""
    scene = task.scene
    agent_loc = S.agent_start(scene)
    obj_classes = sorted({o.cls for o in task.objects} | set(S.REQUIRED_OTYPES))
    recep_classes = sorted(scene.receptacle_classes | set(S.REQUIRED_RTYPES))
    locations = sorted({r.location for r in scene.receptacles} | {agent_loc})

    decl = ["agent1 - agent"]
    decl += [f"{c}Type - otype" for c in obj_classes]
    decl += [f"{c}Type - rtype" for c in recep_classes]
    decl += [f"{mangle(o.thor_id)} - object" for o in task.objects]
    decl += [f"{mangle(r.thor_id)} - receptacle" for r in scene.receptacles]
    decl += [f"{_loc(loc)} - location" for loc in locations]

    init = [f"(atLocation agent1 {_loc(agent_loc)})"]
    for r in scene.receptacles:
        name = mangle(r.thor_id)
        init.append(f"(receptacleType {name} {r.cls}Type)")
        init.append(f"(receptacleAtLocation {name} {_loc(r.location)})")
        if r.cls in S.OPENABLE:
            init.append(f"(openable {name})")
    for o in task.objects:
        name = mangle(o.thor_id)
        init.append(f"(objectType {name} {o.cls}Type)")
        init.append(f"(inReceptacle {name} {mangle(o.receptacle.thor_id)})")
        init.append(f"(objectAtLocation {name} {_loc(o.receptacle.location)})")
        for prop, members in (
            ("pickupable", S.PICKUPABLE),
            ("isReceptacleObject", S.MOVABLE_RECEPTACLES),
            ("cleanable", S.CLEANABLE),
            ("heatable", S.HEATABLE),
            ("coolable", S.COOLABLE),
            ("sliceable", S.SLICEABLE),
            ("toggleable", S.TOGGLEABLE),
        ):
            if o.cls in members:
                init.append(f"({prop} {name})")
    present_objects = {o.cls for o in task.objects}
    for rc in sorted(scene.receptacle_classes):
        for oc in sorted(present_objects):
            if S.can_contain(rc, oc):
                init.append(f"(canContain {rc}Type {oc}Type)")

    goal = (
        glib.gdict[task.task_type]["pddl"]
        .format(obj=task.object_target, recep=task.parent_target, toggle=task.toggle_target, mrecep="")
        .replace("#", "-")
    )
    lines = [f"(define (problem plan_{task.trial})", "(:domain alfred)", "(:objects"]
    lines += ["        " + d for d in decl]
    lines += ["        )", "", "(:init", ""]
    lines += ["        " + f for f in init]
    lines += ["        )", "", goal.strip(), ""]
    return "\n".join(lines)


def game_json(task: Task, walkthrough: list[str] | None = None, solvable: bool = False) -> dict[str, Any]:
    return {
        "pddl_domain": domain_text(),
        "grammar": grammar_template().replace("UNKNOWN GOAL", task.task_desc),
        "pddl_problem": problem_text(task),
        "solvable": solvable,
        "walkthrough": list(walkthrough or []),
    }


def traj_data(task: Task) -> dict[str, Any]:
    """The subset of ALFRED's traj_data.json that ALFWorld reads, plus the scene and task text."""
    return {
        "task_id": task.trial,
        "task_type": task.task_type,
        "pddl_params": task.pddl_params,
        "scene": {"floor_plan": f"FloorPlan{task.scene.num}", "scene_num": task.scene.num},
        "turk_annotations": {"anns": [{"task_desc": task.task_desc, "high_descs": [], "votes": [1, 1, 1]}]},
        "agentrl": dict(task.info),
    }
