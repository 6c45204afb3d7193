"""WebShop catalogue generator and the loader for the original file schema."""

import json
import re

import pytest
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from agentrl.envs.webshop.catalogue import (
    ATTRIBUTE_POOLS,
    DESCRIPTION_CLOSINGS,
    DESCRIPTION_OPENINGS,
    PRODUCT_TYPES,
    generate_catalogue,
    write_catalogue,
)
from agentrl.envs.webshop.loader import (
    PRICE_RANGE,
    SPLITS,
    WebShopDataError,
    build_shop,
    load_files,
    load_shop,
)
from agentrl.envs.webshop.pages import SEP, PageMachine, PageState
from agentrl.envs.webshop.reward import get_reward

PRODUCT_KEYS = {
    "asin",
    "name",
    "full_description",
    "small_description",
    "pricing",
    "customization_options",
    "category",
    "query",
    "product_category",
}


@pytest.fixture(scope="module")
def data():
    return generate_catalogue(seed=0)


@pytest.fixture(scope="module")
def shop():
    return load_shop()


def best_options(product, goal):
    """The option dict a careful shopper would pick on this product for this goal."""
    chosen = {}
    for value in goal["goal_options"]:
        for group, values in product["options"].items():
            if value in values:
                chosen[group] = value
    return chosen


def test_deterministic_by_seed(data):
    again = generate_catalogue(seed=0)
    assert json.dumps(again, sort_keys=True) == json.dumps(data, sort_keys=True)
    other = generate_catalogue(seed=1)
    assert [p["asin"] for p in other["items"]] != [p["asin"] for p in data["items"]]


def test_schema_size_and_types(data):
    items = data["items"]
    assert len(items) == 1000
    assert len({p["asin"] for p in items}) == 1000
    assert len({p["query"] for p in items}) == len(PRODUCT_TYPES) >= 20
    for p in items:
        assert set(p) >= PRODUCT_KEYS
        assert re.fullmatch(r"B0[0-9A-Z]{8}", p["asin"])
        assert re.fullmatch(r"\$\d+\.\d\d( - \$\d+\.\d\d)?", p["pricing"]), p["pricing"]
        assert len(p["product_category"].split(" › ")) >= 3
        assert isinstance(p["small_description"], list) and p["small_description"]
        values = [o["value"] for opts in p["customization_options"].values() for o in opts]
        assert values and len(values) == len(set(values)), "a value must name one option group only"
        assert data["attributes"][p["asin"]]["attributes"]
    ranged = sum(" - " in p["pricing"] for p in items)
    assert 50 < ranged < 300


def test_goals_ask_for_what_the_product_has(data):
    by_asin = {p["asin"]: p for p in data["items"]}
    n = 0
    for asin, goals in data["human_ins"].items():
        attrs = set(data["attributes"][asin]["attributes"])
        values = {o["value"] for opts in by_asin[asin]["customization_options"].values() for o in opts}
        for g in goals:
            assert g["asin"] == asin and g["instruction"]
            assert set(g["instruction_attributes"]) <= attrs and 2 <= len(g["instruction_attributes"]) <= 3
            assert set(g["instruction_options"]) <= values and 1 <= len(g["instruction_options"]) <= 2
            n += 1
    assert n == 3000


def test_attribute_pools_are_distinguishable():
    """No attribute is a substring of another or a fuzzy match of it: a distractor that lacks one lacks it."""
    for pool in ATTRIBUTE_POOLS.values():
        for a in pool:
            for b in pool:
                if a != b:
                    assert a not in b, (a, b)
                    assert fuzz.token_set_ratio(a, b, processor=default_process) <= 85, (a, b)


def test_filler_text_names_no_attribute(data):
    fillers = " ".join(DESCRIPTION_OPENINGS + DESCRIPTION_CLOSINGS).lower()
    every = {a for pool in ATTRIBUTE_POOLS.values() for a in pool}
    assert not [a for a in every if a in fillers]
    department = {t.name.lower(): t.department for t in PRODUCT_TYPES}
    for p in data["items"]:
        pool = set(ATTRIBUTE_POOLS[department[p["query"]]])
        own = set(data["attributes"][p["asin"]]["attributes"])
        text = " ".join([p["name"], p["full_description"], *p["small_description"]]).lower()
        assert not [a for a in pool - own if a in text], p["name"]


def test_every_goal_has_a_distractor_of_its_type(shop):
    """Reading the page matters: some product of the same type scores < 1 even with the best options."""
    by_query = {}
    for p in shop.products:
        by_query.setdefault(p["query"], []).append(p)
    for goal in shop.goals[:500]:
        scores = []
        for p in by_query[goal["query"]]:
            r, _ = get_reward(p, goal, shop.prices[p["asin"]], best_options(p, goal))
            scores.append(r)
        assert max(scores) == 1.0
        assert min(scores) < 1.0


def test_loader_splits_and_price_bounds(shop):
    assert len(shop.goals) == 3000
    assert [len(shop.split_indices(s)) for s in ("test", "eval", "train")] == [500, 1000, 1500]
    assert SPLITS["test"] == (0, 500)
    for g in shop.goals:
        price = shop.prices[g["asin"]]
        steps = [x for x in PRICE_RANGE if x > price][:4]
        assert g["price_upper"] in steps[1:], (price, g["price_upper"])
        assert g["instruction_text"].endswith(f", and price lower than {g['price_upper']:.2f} dollars")
    with pytest.raises(ValueError, match="unknown WebShop split 'dev'"):
        shop.split_indices("dev")


def test_written_files_load_like_the_in_memory_catalogue(tmp_path, shop):
    paths = write_catalogue(tmp_path, seed=0, num_products=1000)
    assert sorted(p.name for p in paths) == [
        "items_human_ins.json",
        "items_ins_v2_1000.json",
        "items_shuffle_1000.json",
        "reviews.json",
    ]
    loaded = load_files(tmp_path, num_products=1000)
    assert loaded.goals == shop.goals
    assert loaded.prices == shop.prices
    assert [p["Title"] for p in loaded.products] == [p["Title"] for p in shop.products]


def test_both_constructors_give_the_same_goal_splits(tmp_path, monkeypatch):
    """make("webshop") and make("webshop", data_dir=<the same catalogue written out>) share one goal order."""
    from agentrl.envs import make

    monkeypatch.delenv("WEBSHOP_DATA", raising=False)
    write_catalogue(tmp_path, seed=0, num_products=1000)
    for split, size in (("test", 500), ("eval", 1000), ("train", 1500)):
        generated, from_files = (
            make("webshop", split=split),
            make("webshop", split=split, data_dir=str(tmp_path)),
        )
        assert generated.task_ids() == from_files.task_ids() and len(generated.task_ids()) == size
        ids = [int(i) for i in generated.task_ids()]
        assert [generated.shop.goals[i] for i in ids] == [from_files.shop.goals[i] for i in ids]
    # the goal order is the original's shuffle with seed 233, whatever the catalogue seed
    other = load_shop(None, 1000, 1)
    assert [g["asin"] for g in load_shop(None, 1000, 0).goals[:3]] != [g["asin"] for g in other.goals[:3]]


def _read_like_the_original(folder, n):
    """Every field access of the original load_products / get_human_goals / get_synthetic_goals on written files."""
    items = json.loads((folder / f"items_shuffle_{n}.json").read_text())
    attributes = json.loads((folder / f"items_ins_v2_{n}.json").read_text())
    human = json.loads((folder / "items_human_ins.json").read_text())
    reviews = {
        r["asin"]: (r["reviews"], r["average_rating"])
        for r in json.loads((folder / "reviews.json").read_text())
    }
    seen = 0
    for p in items:
        asin = p["asin"]
        assert asin != "nan" and len(asin) <= 10
        _ = (
            p["category"],
            p["query"].lower().strip(),
            p["product_category"],
            p["name"],
            p["full_description"],
        )
        assert (
            isinstance(p["small_description"], list) and p["small_description"][0]
        )  # BulletPoints[0] is indexed
        assert isinstance(p["pricing"], str) and p["pricing"].split("$")[1:]
        for name, contents in p["customization_options"].items():
            for c in contents:
                _ = (name.lower(), c["value"].strip().replace("/", " | ").lower(), c.get("image"))
        assert isinstance(p["images"][0], str) and p["images"][0]  # MainImage = images[0]
        assert attributes[asin]["attributes"]  # synthetic goals index attributes[asin] for every product
        _ = (attributes[asin].get("instruction"), attributes[asin].get("instruction_attributes"))
        for ins in human.get(asin, []):
            _ = (ins["instruction"].strip("."), ins["instruction_attributes"], ins["instruction_options"])
        assert reviews[asin] == ([], "N.A.")
        seen += 1
    return seen


def test_written_files_are_what_the_original_loader_reads(tmp_path):
    write_catalogue(tmp_path, seed=0, num_products=100)
    assert _read_like_the_original(tmp_path, 100) == 100


def test_loader_reads_reviews_as_the_original(tmp_path):
    write_catalogue(tmp_path, seed=0, num_products=100)
    reviews = json.loads((tmp_path / "reviews.json").read_text())
    reviews[0] = {
        "asin": reviews[0]["asin"],
        "average_rating": 4.5,
        "reviews": [{"title": "Great", "stars": 5, "review": "Works well."}, {"title": "Meh", "score": 2}],
    }
    (tmp_path / "reviews.json").write_text(json.dumps(reviews))
    shop = load_files(tmp_path)
    p = shop.by_asin[reviews[0]["asin"]]
    assert p["Rating"] == 4.5
    assert p["Reviews"] == [
        {"title": "Great", "score": 5, "body": "Works well."},
        {"title": "Meh", "score": 2, "body": ""},
    ]
    assert (
        shop.by_asin[reviews[1]["asin"]]["Reviews"] == []
        and shop.by_asin[reviews[1]["asin"]]["Rating"] == "N.A."
    )
    machine = PageMachine(shop)
    session = machine.new_session(0)
    session.state = PageState("sub", asin=p["asin"], sub="reviews")
    assert machine.render(session).text().split(SEP)[4:] == ['"Great"', "5", "Works well.", '"Meh"', "2"]
    (tmp_path / "reviews.json").unlink()  # agentrl (unlike the original) loads a folder without one
    assert load_files(tmp_path).by_asin[reviews[0]["asin"]]["Reviews"] == []


def _raw_item(asin="B000000001", **kw):
    item = {
        "asin": asin,
        "name": "Acme Teapot",
        "full_description": "A teapot.",
        "small_description": "one bullet",
        "pricing": "$10.00 - $20.00",
        "customization_options": {"Color": [{"value": "Navy/White", "image": None}]},
        "category": "food",
        "query": " Teapot ",
        "product_category": "Home › Kitchen › Teapots",
        "images": ["x.jpg"],
    }
    item.update(kw)
    return item


def test_loader_follows_the_original_processing():
    items = [_raw_item(), _raw_item(asin="nan"), _raw_item(), _raw_item(asin="B000000002", pricing="$7.5")]
    attrs = {"B000000001": {"attributes": ["loose leaf"]}, "B000000002": {}}
    human = {
        "B000000001": [
            {
                "instruction": "i want a teapot.",
                "instruction_attributes": ["loose leaf"],
                "instruction_options": ["navy | white"],
            },
            {
                "instruction": "skipped: no attributes",
                "instruction_attributes": [],
                "instruction_options": [],
            },
        ]
    }
    shop = build_shop(items, attrs, human, seed=3)
    assert [p["asin"] for p in shop.products] == ["B000000001", "B000000002"]
    p1, p2 = shop.products
    assert p1["options"] == {"color": ["navy | white"]}
    assert p1["Price"] == "$10.0 to $20.0" and p1["pricing"] == [10.0, 20.0]
    assert 10.0 <= shop.prices["B000000001"] <= 20.0
    assert p1["BulletPoints"] == ["one bullet"] and p1["query"] == "teapot" and p1["Rating"] == "N.A."
    assert p2["Attributes"] == ["DUMMY_ATTR"] and p2["Price"] == "$7.5" and shop.prices["B000000002"] == 7.5
    assert len(shop.goals) == 1
    goal = shop.goals[0]
    assert goal["instruction_text"].startswith("i want a teapot, and price lower than ")
    assert goal["goal_options"] == ["navy | white"]


def test_synthetic_goals_cover_every_option_combination():
    options = {
        "Size": [{"value": "S"}, {"value": "M"}],
        "Color": [{"value": "red"}, {"value": "blue"}, {"value": "tan"}],
    }
    items = [_raw_item(customization_options=options, pricing="$15.00")]
    attrs = {
        "B000000001": {
            "attributes": ["loose leaf"],
            "instruction": "i want a teapot",
            "instruction_attributes": ["loose leaf"],
        }
    }
    shop = build_shop(items, attrs, None)
    assert len(shop.goals) == 6
    texts = sorted(g["instruction_text"] for g in shop.goals)
    bound = shop.goals[0]["price_upper"]
    assert (
        texts[0] == f"i want a teapot with color: blue, and size: m, and price lower than {bound:.2f} dollars"
    )
    assert {tuple(sorted(g["goal_options"].items())) for g in shop.goals} == {
        (("color", c), ("size", s)) for c in ("red", "blue", "tan") for s in ("s", "m")
    }


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(WebShopDataError, match="lacks key"):
        build_shop([{"asin": "B1"}], {}, {})
    with pytest.raises(WebShopDataError, match="does not exist"):
        load_files(tmp_path / "nope")
    (tmp_path / "items_shuffle_5.json").write_text("{not json")
    with pytest.raises(WebShopDataError, match="items_shuffle_5.json is not valid JSON"):
        load_files(tmp_path)
    with pytest.raises(WebShopDataError, match="no file matching 'items_shuffle"):
        load_files(tmp_path / "..")
    with pytest.raises(ValueError, match="num_products must be >= 50"):
        generate_catalogue(num_products=10)


def test_small_catalogue_has_no_eval_split():
    small = load_shop(num_products=100)
    assert len(small.goals) == 300
    with pytest.raises(ValueError, match="split 'eval' needs goals"):
        small.split_indices("eval")
