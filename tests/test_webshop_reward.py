"""Worked examples of the original WebShop reward, one per branch; expected values computed by hand.

r = r_type * (n_attr + n_option + [price <= upper]) / (|attrs| + |options| + 1)
"""

import pytest
from rapidfuzz import fuzz

from agentrl.envs.webshop.reward import (
    attribute_matches,
    get_reward,
    normalize_color,
    option_matches,
    title_nouns,
    type_reward,
)


def product(**kw):
    p = {"name": "Acme Kettle", "Title": "Acme Kettle", "query": "kettle",
         "product_category": "Home › Kitchen › Kettles", "Attributes": ["bpa free", "fast boiling"],
         "BulletPoints": ["Keeps tea warm for hours"], "Description": "A cordless kettle with a glass window."}
    p.update(kw)
    return p


def goal(**kw):
    g = {"name": "Acme Kettle", "query": "kettle", "product_category": "Home › Kitchen › Kettles",
         "attributes": ["bpa free", "fast boiling"], "goal_options": ["black", "1.5l"], "price_upper": 40.0}
    g.update(kw)
    return g


def test_fuzzy_option_match_is_case_and_punctuation_blind():
    # thefuzz lower-cases; rapidfuzz without a processor does not: "4K" vs "4k" scores 50 there.
    assert fuzz.token_set_ratio("4K", "4k") == 50
    assert option_matches(["4k"], ["4K"]) == 1
    assert option_matches(["4-K"], ["4k"]) == 0  # "4 k" vs "4k": different tokens
    assert option_matches(["1.5L"], ["1.5l"]) == 1


def test_colour_normalisation():
    # first colour word in the fixed order wins: both become "blue" (checked before "dark"/"navy")
    assert normalize_color("navy blue") == "blue" and normalize_color("dark blue") == "blue"
    assert normalize_color("rose gold") == "gold"
    assert normalize_color("XL") == "XL"
    # token_set_ratio("navy blue", "dark blue") = 66.7 <= 85, but after normalisation it is 100
    assert option_matches(["navy blue"], ["dark blue"]) == 1
    assert option_matches(["light grey"], ["grey"]) == 1
    assert option_matches(["red"], ["blue"]) == 0


def test_attribute_match_fuzzy_then_text():
    p = product()
    assert attribute_matches(p, ["BPA-free"]) == 1  # fuzzy on the attribute list
    assert attribute_matches(p, ["glass window"]) == 1  # substring of the description
    assert attribute_matches(p, ["keeps tea warm"]) == 1  # substring of a bullet
    assert attribute_matches(p, ["acme kettle"]) == 1  # substring of the title (lower-cased)
    assert attribute_matches(p, ["dishwasher safe"]) == 0


def test_price_bound_is_inclusive():
    p, g = product(), goal()
    opts = {"color": "black", "capacity": "1.5l"}
    assert get_reward(p, g, 40.0, opts)[0] == 1.0  # (2 + 2 + 1) / 5
    r, info = get_reward(p, g, 40.01, opts)
    assert r == pytest.approx(4 / 5) and info["r_price"] is False


def test_partial_matches_count_each_part():
    p, g = product(), goal(attributes=["bpa free", "dishwasher safe"])
    r, info = get_reward(p, g, 10.0, {"color": "white", "capacity": "1.5l"})
    # attributes 1/2, options 1/2, price 1 -> (1 + 1 + 1) / 5
    assert r == pytest.approx(3 / 5)
    assert info["r_att"] == 0.5 and info["r_option"] == 0.5 and info["w_att"] == pytest.approx(2 / 5)


def test_type_match_level_one_by_query():
    t = type_reward(product(name="Acme Kettle"), goal(name="Acme Kettle Teapot"))
    # nouns of goal name {acme, kettle, teapot}; shared {acme, kettle} -> 2/3
    assert t == {"r_type": 1.0, "query_match": True, "category_match": True, "title_score": pytest.approx(2 / 3)}


def test_type_match_level_one_by_category_only():
    p = product(query="teapot", name="Kettle", product_category="Home › Kitchen › Teapots")
    g = goal(name="kettle teapot stove handle spout")
    t = type_reward(p, g)
    # title 1/5 = 0.2 (not > 0.2), query differs, but {Home, Kitchen} shared -> 1.0
    assert t["title_score"] == pytest.approx(0.2) and not t["query_match"] and t["category_match"]
    assert t["r_type"] == 1.0


def test_type_match_level_half():
    p = product(query="teapot", name="Kettle", product_category="Garden › Kitchen › Teapots")
    t = type_reward(p, goal(name="kettle teapot stove handle spout"))
    assert (t["title_score"], t["category_match"], t["r_type"]) == (pytest.approx(0.2), False, 0.5)
    r, _ = get_reward(p, goal(name="kettle teapot stove handle spout"), 10.0, {"color": "black", "capacity": "1.5l"})
    assert r == pytest.approx(0.5 * 5 / 5)


def test_type_match_level_tenth_even_when_query_matches():
    # 11 goal nouns, 1 shared -> 0.0909 < 0.1 -> 0.1, whatever the query says (the original's order)
    name = "kettle teapot stove handle spout lid cord base filter window button"
    assert len(title_nouns(name)) == 11
    t = type_reward(product(name="Kettle"), goal(name=name))
    assert t["query_match"] and t["r_type"] == 0.1
    r, _ = get_reward(product(name="Kettle"), goal(name=name), 10.0, {"color": "black", "capacity": "1.5l"})
    assert r == pytest.approx(0.1)


def test_type_match_level_zero():
    t = type_reward(product(name="Garden Hose"), goal(name="Acme Kettle"))
    assert t["title_score"] == 0.0 and t["r_type"] == 0.0
    assert get_reward(product(name="Garden Hose"), goal(), 10.0, {"color": "black", "capacity": "1.5l"})[0] == 0.0


def test_goal_name_without_nouns_scores_point_two():
    t = type_reward(product(name="Kettle", query="x", product_category="A › B"), goal(name="the best of new", query="y"))
    assert t["title_score"] == 0.2 and t["r_type"] == 0.5


def test_synthetic_goal_options_as_a_dict():
    r, _ = get_reward(product(), goal(goal_options={"color": "black"}), 10.0, {"color": "jet black"})
    assert r == 1.0  # (2 + 1 + 1) / 4
