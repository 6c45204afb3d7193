"""Sample ALFRED tasks on the shipped floor plans, deterministically from a random.Random.

Rules (from ALFRED and what the PDDL domain needs): the goal object must fit the goal receptacle;
it never starts in a receptacle of the goal class; clean needs a SinkBasin, heat a Microwave, cool
a Fridge; look needs a lamp standing on a receptacle; pick-two needs at least two targets; task
types only use the room types ALFRED allows for them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from agentrl.envs.alfworld import scenes as S
from agentrl.envs.alfworld.pddl import PlacedObject, Task, fill_template, task_templates

MAX_INSTANCES = 3  # ALFRED's MAX_NUM_OF_OBJ_INSTANCES
APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
STATE_OK = {
    "pick_clean_then_place_in_recep": S.CLEANABLE,
    "pick_heat_then_place_in_recep": S.HEATABLE,
    "pick_cool_then_place_in_recep": S.COOLABLE,
}


class NoTaskError(ValueError):
    """The scene cannot host a task of this type."""


def _candidate_pairs(task_type: str, scene: S.Scene) -> list[tuple[str, str]]:
    """(object class, goal receptacle or lamp class) pairs this scene supports."""
    receps = scene.receptacle_classes
    objects = sorted(c for c in set(scene.object_classes) if c in S.PICKUPABLE)

    def starts_somewhere(obj: str, exclude: str) -> bool:
        return any(S.can_contain(r, obj) and r != exclude for r in receps)

    if task_type == "look_at_obj_in_light":
        if not any(r in receps for r in S.LAMP_RECEPTACLES):
            return []
        lamps = [lamp for lamp in S.LAMPS if lamp in scene.object_classes]
        return [(o, lamp) for lamp in lamps for o in objects if starts_somewhere(o, "")]

    appliance = APPLIANCE.get(task_type)
    if appliance is not None and appliance not in receps:
        return []
    pairs = []
    for obj in objects:
        if task_type in STATE_OK and obj not in STATE_OK[task_type]:
            continue
        for recep in sorted(receps):
            if recep == appliance or (recep == "BathtubBasin" and appliance == "SinkBasin"):
                continue
            if S.can_contain(recep, obj) and starts_somewhere(obj, recep):
                pairs.append((obj, recep))
    return pairs


def _object_id(cls: str, recep: S.Receptacle, rng: random.Random, used: set[str]) -> str:
    base = [float(v) for v in recep.thor_id.split("|")[1:4]]
    while True:
        coords = [
            v + rng.uniform(-0.3, 0.3) if i != 1 else v + rng.uniform(0.0, 0.2) for i, v in enumerate(base)
        ]
        thor_id = cls + "".join(f"|{c:+06.2f}" for c in coords)
        if thor_id not in used:
            used.add(thor_id)
            return thor_id


def sample_task(task_type: str, scene: S.Scene, rng: random.Random) -> Task:
    """Place the objects of ``scene`` and pick a goal of ``task_type``; NoTaskError if impossible."""
    pairs = _candidate_pairs(task_type, scene)
    if not pairs:
        raise NoTaskError(f"scene {scene.num} cannot host {task_type}")
    obj_target, second = rng.choice(pairs)
    look = task_type == "look_at_obj_in_light"
    parent = "" if look else second
    toggle = second if look else ""

    by_class: dict[str, list[S.Receptacle]] = {}
    for r in scene.receptacles:
        by_class.setdefault(r.cls, []).append(r)
    lamp_spots = [r for r in scene.receptacles if r.cls in S.LAMP_RECEPTACLES]

    used: set[str] = set()
    objects: list[PlacedObject] = []
    for cls in sorted(set(scene.object_classes)):
        if cls in S.LAMPS:
            if lamp_spots:
                spot = rng.choice(lamp_spots)
                objects.append(PlacedObject(_object_id(cls, spot, rng, used), cls, spot))
            continue
        if cls not in S.PICKUPABLE:
            continue
        spots = [
            r
            for r in scene.receptacles
            if S.can_contain(r.cls, cls) and not (cls == obj_target and r.cls == parent)
        ]
        if not spots:
            continue
        low = 2 if (cls == obj_target and task_type == "pick_two_obj_and_place") else 1
        for _ in range(rng.randint(low, MAX_INSTANCES)):
            spot = rng.choice(spots)
            objects.append(PlacedObject(_object_id(cls, spot, rng, used), cls, spot))

    task = Task(task_type, scene, objects, obj_target, parent, toggle)
    task.task_desc = fill_template(rng.choice(task_templates(task_type)), task)
    task.trial = f"trial_T2019{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}_{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}_{rng.randint(0, 999_999):06d}"
    return task


def scenes_for(task_type: str, scene_nums: Sequence[int]) -> list[S.Scene]:
    rooms = S.valid_rooms(task_type)
    return [S.load_scene(n) for n in scene_nums if S.room_type(n) in rooms]


def sample_tasks(task_type: str, scene_nums: Sequence[int], n: int, rng: random.Random) -> list[Task]:
    """``n`` tasks of one type on the given floor plans (scenes that cannot host it are skipped)."""
    scenes = scenes_for(task_type, scene_nums)
    if not scenes:
        raise NoTaskError(f"no scene among {list(scene_nums)} allows {task_type}")
    tasks: list[Task] = []
    attempts = 0
    while len(tasks) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise NoTaskError(
                f"could only sample {len(tasks)} of {n} {task_type} tasks on scenes {list(scene_nums)}"
            )
        try:
            tasks.append(sample_task(task_type, rng.choice(scenes), rng))
        except NoTaskError:
            continue
    return tasks
