"""AI2-THOR scenes and object rules as shipped inside the ``alfworld`` package.

The generator needs, per floor plan, which receptacles exist (with their interaction poses, from
``FloorPlan*-openable.json``) and which object classes appear (``FloorPlan*-objects.json``), plus
ALFRED's rules about what fits where and what can be cleaned, heated, cooled or toggled
(``alfworld/gen/constants.py``). This module turns those files into plain data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache

import alfworld.gen.constants as C

TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

MOVABLE_RECEPTACLES: frozenset[str] = frozenset(C.MOVABLE_RECEPTACLES)
# Receptacles that stay in place: the only ones that are PDDL ``receptacle``s.
STATIC_RECEPTACLES: frozenset[str] = frozenset(C.VAL_RECEPTACLE_OBJECTS) - MOVABLE_RECEPTACLES
LAMPS: tuple[str, ...] = ("DeskLamp", "FloorLamp")
# Receptacles a lamp may stand on (lamps are toggled where they stand, so they need one).
LAMP_RECEPTACLES: tuple[str, ...] = (
    "Desk",
    "SideTable",
    "Dresser",
    "Shelf",
    "CoffeeTable",
    "TVStand",
    "ArmChair",
    "Sofa",
    "Bed",
    "DiningTable",
    "CounterTop",
)
PICKUPABLE: frozenset[str] = frozenset(
    o for objs in C.VAL_RECEPTACLE_OBJECTS.values() for o in objs if not o.endswith("Sliced")
)
CLEANABLE: frozenset[str] = frozenset(C.VAL_ACTION_OBJECTS["Cleanable"])
HEATABLE: frozenset[str] = frozenset(C.VAL_ACTION_OBJECTS["Heatable"])
COOLABLE: frozenset[str] = frozenset(C.VAL_ACTION_OBJECTS["Coolable"])
SLICEABLE: frozenset[str] = frozenset(C.VAL_ACTION_OBJECTS["Sliceable"])
TOGGLEABLE: frozenset[str] = frozenset(C.VAL_ACTION_OBJECTS["Toggleable"])
OPENABLE: frozenset[str] = frozenset(C.OPENABLE_CLASS_LIST)
# Receptacle classes a room may list in objects.json without a pose in openable.json; real
# ALFWorld kitchens have four stove burners.
EXTRA_RECEPTACLE_COUNT: dict[str, int] = {"StoveBurner": 4}
# The domain has no constants: every problem declares the types its actions name.
REQUIRED_RTYPES: tuple[str, ...] = ("SinkBasin", "Microwave", "Fridge")
REQUIRED_OTYPES: tuple[str, ...] = ("Knife", "ButterKnife")


def can_contain(recep_cls: str, obj_cls: str) -> bool:
    return obj_cls in C.VAL_RECEPTACLE_OBJECTS.get(recep_cls, ())


def room_type(scene_num: int) -> str:
    for name, nums in C.SCENE_TYPE.items():
        if scene_num in nums:
            return name
    raise ValueError(f"scene {scene_num} belongs to no ALFRED room type")


def valid_rooms(task_type: str) -> frozenset[str]:
    return frozenset(C.GOALS_VALID[task_type])


def seen_scenes() -> tuple[int, ...]:
    """Scenes of train and valid_seen (ALFRED's training floor plans)."""
    return tuple(C.TRAIN_SCENE_NUMBERS)


def unseen_scenes() -> tuple[int, ...]:
    """Held-out scenes of valid_unseen."""
    return tuple(C.TEST_SCENE_NUMBERS)


@dataclass(frozen=True)
class Receptacle:
    thor_id: str  # AI2-THOR id, e.g. "Cabinet|+00.68|+00.50|-02.20" or "Sink|...|SinkBasin"
    cls: str  # ALFRED class, e.g. "Cabinet", "SinkBasin"
    location: str  # "loc|x|z|rotation|horizon" (grid units of 0.25 m, as in ALFRED)


@dataclass(frozen=True)
class Scene:
    num: int
    receptacles: tuple[Receptacle, ...]
    object_classes: tuple[str, ...]  # classes listed for the floor plan (receptacles included)

    @property
    def receptacle_classes(self) -> frozenset[str]:
        return frozenset(r.cls for r in self.receptacles)


def layouts_dir() -> str:
    return os.path.join(os.path.dirname(C.__file__), "layouts")


def _location(pose: list[float]) -> tuple[int, int, int, int]:
    x, z, rotation, horizon = pose
    return round(x / 0.25), round(z / 0.25), round(rotation / 90) % 4, int(horizon)


@cache
def load_scene(num: int) -> Scene:
    """Receptacles (one location each, as the text engine needs) and object classes of a floor plan."""
    base = os.path.join(layouts_dir(), f"FloorPlan{num}")
    try:
        with open(base + "-openable.json", encoding="utf-8") as f:
            poses = json.load(f)
        with open(base + "-objects.json", encoding="utf-8") as f:
            classes = tuple(json.load(f))
    except FileNotFoundError as e:
        raise ValueError(
            f"FloorPlan{num} is not among the layouts shipped with alfworld ({layouts_dir()})"
        ) from e

    taken: set[tuple[int, int, int, int]] = set()

    def unique(loc: tuple[int, int, int, int]) -> str:
        x, z, r, h = loc
        while (x, z, r, h) in taken:  # two receptacles seen from one pose: give each its own spot
            h += 1
        taken.add((x, z, r, h))
        return f"loc|{x}|{z}|{r}|{h}"

    receps = []
    for thor_id in sorted(poses):
        parts = thor_id.split("|")
        cls = parts[-1] if len(parts) == 5 else parts[0]
        if cls in STATIC_RECEPTACLES:
            receps.append(Receptacle(thor_id, cls, unique(_location(poses[thor_id]))))
    present = {r.cls for r in receps}
    for k, cls in enumerate(sorted(c for c in set(classes) if c in STATIC_RECEPTACLES and c not in present)):
        for i in range(EXTRA_RECEPTACLE_COUNT.get(cls, 1)):
            thor_id = f"{cls}|{-1.0 - 0.5 * k:+06.2f}|{0.9 + 0.01 * i:+06.2f}|{1.0 + 0.3 * i:+06.2f}"
            receps.append(Receptacle(thor_id, cls, unique((-20 - k, 20 + i, k % 4, 0))))
    return Scene(num, tuple(receps), classes)


def agent_start(scene: Scene) -> str:
    """A location with no receptacle: the agent starts "in the middle of a room"."""
    used = {r.location for r in scene.receptacles}
    x = 0
    while f"loc|{x}|{x}|0|30" in used:
        x += 1
    return f"loc|{x}|{x}|0|30"
