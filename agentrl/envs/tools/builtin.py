"""Built-in tool tasks for tests and the quickstart: a calculator, unit conversion, and a store.

Every task is generated from a seed and carries an expert solution (the calls, turn by turn, and
the final answer), which gives SFT data and an oracle. The store sells the WebShop catalogue's
products (generated offline, same seed material as the WebShop env).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from agentrl.envs.tools.env import Episode, Solution, ToolEnv, ToolTask
from agentrl.envs.tools.schema import Tool, tool

__all__ = [
    "CALCULATOR_TOOLS",
    "STORE_TOOLS",
    "SUITES",
    "UNIT_TOOLS",
    "builtin_reward",
    "builtin_tool_env",
    "last_number",
    "make_tasks",
]

SUITES = ("calculator", "units", "store")
SPLITS = ("train", "test")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands separators allowed), or None."""
    found = _NUMBER.findall(text or "")
    return float(found[-1].replace(",", "")) if found else None


# ----------------------------------------------------------------------------- calculator


@tool
def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: the first addend
        b: the second addend
    """
    return a + b


@tool
def subtract(a: float, b: float) -> float:
    """Subtract b from a.

    Args:
        a: the number to subtract from
        b: the number to subtract
    """
    return a - b


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


@tool
def divide(a: float, b: float) -> float:
    """Divide a by b.

    Args:
        a: the dividend
        b: the divisor (not zero)
    """
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return a / b


CALCULATOR_TOOLS = (add, subtract, multiply, divide)
_OPS = {
    "add": (lambda a, b: a + b, "plus"),
    "subtract": (lambda a, b: a - b, "minus"),
    "multiply": (lambda a, b: a * b, "times"),
}


def _calculator_task(rng: random.Random, task_id: str) -> ToolTask:
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 20)
    op1, op2 = rng.choice(sorted(_OPS)), rng.choice(sorted(_OPS))
    r1 = _OPS[op1][0](a, b)
    result = _OPS[op2][0](r1, c)
    prompt = f"Use the calculator tools to compute ({a} {_OPS[op1][1]} {b}) {_OPS[op2][1]} {c}. Reply with the number only."
    solution: Solution = (((op1, {"a": a, "b": b}),), ((op2, {"a": float(r1), "b": c}),))
    return ToolTask(task_id, prompt, answer=float(result), solution=solution, final=f"{result}")


# ----------------------------------------------------------------------------- units

Unit = Literal["m", "km", "mile", "ft", "inch", "g", "kg", "lb", "oz", "celsius", "fahrenheit", "kelvin"]
_LENGTH = {"m": 1.0, "km": 1000.0, "mile": 1609.344, "ft": 0.3048, "inch": 0.0254}
_MASS = {"g": 1.0, "kg": 1000.0, "lb": 453.59237, "oz": 28.349523125}
_TEMPS = ("celsius", "fahrenheit", "kelvin")


def _to_kelvin(value: float, unit: str) -> float:
    return {"celsius": value + 273.15, "fahrenheit": (value - 32.0) * 5.0 / 9.0 + 273.15, "kelvin": value}[
        unit
    ]


def _from_kelvin(value: float, unit: str) -> float:
    return {"celsius": value - 273.15, "fahrenheit": (value - 273.15) * 9.0 / 5.0 + 32.0, "kelvin": value}[
        unit
    ]


@tool
def convert(value: float, from_unit: Unit, to_unit: Unit) -> float:
    """Convert a quantity between units of length, mass or temperature.

    Args:
        value: the quantity to convert
        from_unit: the unit of value
        to_unit: the unit wanted
    """
    for table in (_LENGTH, _MASS):
        if from_unit in table and to_unit in table:
            return value * table[from_unit] / table[to_unit]
    if from_unit in _TEMPS and to_unit in _TEMPS:
        return _from_kelvin(_to_kelvin(value, from_unit), to_unit)
    raise ValueError(f"cannot convert {from_unit} to {to_unit}: they measure different things")


UNIT_TOOLS = (convert,)


def _units_task(rng: random.Random, task_id: str) -> ToolTask:
    table = rng.choice((_LENGTH, _MASS, dict.fromkeys(_TEMPS, 0.0)))
    src, dst = rng.sample(sorted(table), 2)
    value = round(rng.uniform(1, 500), 1)
    result = round(convert(value, src, dst), 2)
    prompt = f"Convert {value} {src} to {dst}. Reply with the number rounded to 2 decimals."
    return ToolTask(
        task_id,
        prompt,
        answer=result,
        solution=((("convert", {"value": value, "from_unit": src, "to_unit": dst}),),),
        final=f"{result:.2f}",
    )


# ----------------------------------------------------------------------------- store


@lru_cache(maxsize=2)
def _catalogue(seed: int = 0, num_products: int = 240) -> dict[str, dict[str, Any]]:
    from agentrl.envs.webshop.catalogue import generate_catalogue

    items = generate_catalogue(seed=seed, num_products=num_products)["items"]
    return {
        p["asin"]: {
            "product_id": p["asin"],
            "name": p["name"],
            "type": p["query"],
            "price": float(p["pricing"].split("-")[0].strip().lstrip("$")),
            "description": p["full_description"],
        }
        for p in items
    }


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


@tool
def search_products(query: str, max_results: int = 10) -> list[dict[str, Any]]:
    """Find products whose name or type contains every word of the query.

    Args:
        query: words to look for, e.g. a brand and a product type
        max_results: at most this many products are returned
    """
    wanted = _words(query)
    if not wanted:
        raise ValueError("the query has no words")
    hits = [p for p in _catalogue().values() if wanted <= _words(f"{p['name']} {p['type']}")]
    return [
        {"product_id": p["product_id"], "name": p["name"], "price": p["price"]}
        for p in hits[: max(1, min(max_results, 50))]
    ]


@tool
def get_product(product_id: str) -> dict[str, Any]:
    """Details of one product.

    Args:
        product_id: the id returned by search_products
    """
    product = _catalogue().get(product_id)
    if product is None:
        raise KeyError(f"no product with id {product_id!r}")
    return dict(product)


@tool
def add_to_cart(product_id: str, quantity: int = 1, state: Any = None) -> dict[str, int]:
    """Put a product in the shopping cart.

    Args:
        product_id: the product to add
        quantity: how many units (1 to 20)
    """
    if product_id not in _catalogue():
        raise KeyError(f"no product with id {product_id!r}")
    if not 1 <= quantity <= 20:
        raise ValueError(f"quantity must be between 1 and 20, got {quantity}")
    state["cart"][product_id] = state["cart"].get(product_id, 0) + quantity
    return dict(state["cart"])


@tool
def view_cart(state: Any = None) -> dict[str, int]:
    """The cart: product id -> quantity."""
    return dict(state["cart"])


@tool
def checkout(state: Any = None) -> dict[str, Any]:
    """Pay for everything in the cart and empty it."""
    if not state["cart"]:
        raise ValueError("the cart is empty")
    catalogue = _catalogue()
    total = round(sum(catalogue[pid]["price"] * n for pid, n in state["cart"].items()), 2)
    order = {"order_id": f"order-{len(state['orders']) + 1}", "items": dict(state["cart"]), "total": total}
    state["orders"].append(order)
    state["cart"] = {}
    return order


STORE_TOOLS = (search_products, get_product, add_to_cart, view_cart, checkout)


def _store_groups() -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(brand, type, products) groups whose cheapest product is unique."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in _catalogue().values():
        groups.setdefault((p["name"].split()[0], p["type"]), []).append(p)
    out = []
    for (brand, ptype), products in sorted(groups.items()):
        prices = sorted(p["price"] for p in products)
        if len(prices) == 1 or prices[0] < prices[1]:
            out.append((brand, ptype, products))
    return out


def _store_task(rng: random.Random, task_id: str, group: tuple[str, str, list[dict[str, Any]]]) -> ToolTask:
    brand, ptype, products = group
    cheapest = min(products, key=lambda p: p["price"])
    qty = rng.randint(1, 4)
    total = round(cheapest["price"] * qty, 2)
    prompt = (
        f"Buy {qty} unit(s) of the cheapest {ptype} made by {brand}, check out, "
        "then reply with the total you paid."
    )
    solution: Solution = (
        (("search_products", {"query": f"{brand} {ptype}"}),),
        (("add_to_cart", {"product_id": cheapest["product_id"], "quantity": qty}),),
        (("checkout", {}),),
    )
    return ToolTask(
        task_id,
        prompt,
        answer={"items": {cheapest["product_id"]: qty}, "total": total},
        state={"cart": {}, "orders": []},
        solution=solution,
        final=f"I paid ${total:.2f}.",
    )


# ----------------------------------------------------------------------------- tasks and reward


def builtin_reward(task: ToolTask, episode: Episode) -> float:
    """Numbers: 1 when the last number of the answer matches; store: 0.5 right order + 0.5 right total."""
    said = last_number(episode.answer or "")
    if isinstance(task.answer, dict):
        orders = episode.state["orders"]
        right_order = len(orders) == 1 and orders[0]["items"] == task.answer["items"]
        right_total = said is not None and abs(said - task.answer["total"]) < 0.005
        return 0.5 * right_order + 0.5 * right_total
    tolerance = 0.011 if task.id.startswith("units") else 1e-6 * max(1.0, abs(task.answer))
    return float(said is not None and abs(said - task.answer) <= tolerance)


def make_tasks(suite: str, split: str = "train", num_tasks: int = 50, seed: int = 0) -> list[ToolTask]:
    """``num_tasks`` tasks of one suite; train and test use disjoint random streams (and store groups)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {SUITES} or 'all'")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    rng = random.Random(f"{suite}/{split}/{seed}")
    if suite == "store":
        groups = _store_groups()
        random.Random(seed).shuffle(groups)
        cut = len(groups) // 5
        pool = groups[:cut] if split == "test" else groups[cut:]
        return [_store_task(rng, f"store-{split}-{i}", pool[i % len(pool)]) for i in range(num_tasks)]
    make = _calculator_task if suite == "calculator" else _units_task
    return [make(rng, f"{suite}-{split}-{i}") for i in range(num_tasks)]


def _tools_of(suites: Sequence[str]) -> list[Tool]:
    by_suite = {"calculator": CALCULATOR_TOOLS, "units": UNIT_TOOLS, "store": STORE_TOOLS}
    return [t for s in suites for t in by_suite[s]]


def builtin_tool_env(
    suite: str = "all", split: str = "train", num_tasks: int = 50, seed: int = 0, **kwargs: Any
) -> ToolEnv:
    """``make("tools", suite="calculator"|"units"|"store"|"all", split=...)``: the built-in tool tasks."""
    suites = list(SUITES) if suite == "all" else [suite]
    tasks = [t for s in suites for t in make_tasks(s, split, num_tasks, seed)]
    return ToolEnv(_tools_of(suites), tasks, builtin_reward, **kwargs)
