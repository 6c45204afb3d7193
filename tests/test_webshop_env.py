"""WebShopEnv: the original text format, page transitions, invalid actions, agents, contract, caches."""

import uuid

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.envs import check_env, gym_id, make
from agentrl.envs.webshop import WebShopEnv
from agentrl.envs.webshop.agents import oracle_actions, random_policy, run_episode, scripted_policy
from agentrl.envs.webshop.pages import SEP, options_json, parse_action


@pytest.fixture(scope="module")
def env():
    return WebShopEnv(split="test")


def results_parts(obs):
    return obs.split(SEP)


def to_results(env, task="0", keywords=None):
    _obs, _info = env.reset(options={"task_id": task})
    goal = env.session.goal
    kw = keywords or env.shop.by_asin[goal["asin"]]["Title"].lower()
    return env.step(f"search[{kw}]")


def test_make_and_gymnasium_id():
    e = make("webshop", split="eval")
    assert isinstance(e, WebShopEnv) and e.task_ids()[0] == "500" and len(e.task_ids()) == 1000
    assert isinstance(gym.make(gym_id("webshop"), split="test").unwrapped, WebShopEnv)


def test_check_env_passes(env):
    check_env(env, other=WebShopEnv(split="test"))


def test_index_page_text(env):
    obs, info = env.reset(options={"task_id": "7"})
    instruction = env.shop.goals[7]["instruction_text"]
    assert obs == f"WebShop [SEP] Instruction: [SEP] {instruction} [SEP] Search"
    assert info["admissible_actions"] == [f"search[{instruction.split(', and price lower than')[0]}]"]
    assert info["state_key"] == obs and info["task_id"] == "7"


def test_results_page_text_and_paging(env):
    obs, reward, term, trunc, info = to_results(env, keywords="black")
    parts = results_parts(obs)
    instruction = env.session.goal["instruction_text"]
    assert parts[:6] == [
        "Instruction:",
        instruction,
        "Back to Search",
        "Page 1 (Total results: 50)",
        "Next >",
        parts[5],
    ]
    hits = env.shop.search.search("black")
    assert len(hits) == 50
    first = env.shop.by_asin[hits[0]]
    assert parts[5:8] == [hits[0], first["Title"], first["Price"]]
    assert len(parts) == 5 + 3 * 10
    assert info["valid"] and reward == 0.0 and not term and not trunc
    assert "click[next >]" in info["admissible_actions"] and "click[< prev]" not in info["admissible_actions"]
    assert not any(a.startswith("search[") for a in info["admissible_actions"])
    for page in range(2, 6):
        obs, *_, info = env.step("click[next >]")
        assert f"Page {page} (Total results: 50)" in obs and "< Prev" in obs
    assert "Next >" not in obs and hits[-1] in obs
    obs, *_ = env.step("click[< prev]")
    assert "Page 4 (Total results: 50)" in obs


def test_item_page_options_and_sub_pages(env):
    env.reset(options={"task_id": "3"})
    actions = oracle_actions(env.shop, 3)
    for a in actions[:-2]:
        obs, _, _, _, info = env.step(a)
    product = env.shop.by_asin[env.shop.goals[3]["asin"]]
    groups = [x for g, vals in product["options"].items() for x in (g, *vals)]
    assert obs.split(SEP)[2:] == [
        "Back to Search",
        "< Prev",
        *groups,
        product["Title"],
        f"Price: {product['Price']}",
        "Rating: N.A.",
        "Description",
        "Features",
        "Reviews",
        "Buy Now",
    ]
    before = info["state_key"]
    value = env.shop.goals[3]["goal_options"][-1]
    obs2, _, _, _, info = env.step(f"click[{value}]")
    assert obs2 == obs and info["valid"] and info["state_key"] != before and f": {value}" in info["state_key"]
    obs3, *_ = env.step("click[Features]")  # labels are matched lower-cased
    assert obs3.split(SEP)[4:] == product["BulletPoints"]
    assert env.step("click[< prev]")[0] == obs
    # the original review page shows nothing when a product has no reviews
    assert env.step("click[reviews]")[0].split(SEP)[2:] == ["Back to Search", "< Prev"]
    obs4, *_ = env.step("click[< prev]")
    assert obs4 == obs and env.session.state.options  # options survive a sub-page visit
    obs5, *_ = env.step("click[< prev]")
    assert "Total results" in obs5


def test_text_rich_marks_buttons_and_what_was_clicked():
    """The original's text_rich format (convert_html_to_text(simple=False)): the selected option is
    shown, so the product page before and after an option click no longer reads alike."""
    env = WebShopEnv(split="test", observation="text_rich")
    obs, _ = env.reset(options={"task_id": "3"})
    instruction = env.shop.goals[3]["instruction_text"]
    assert obs == f"WebShop\nInstruction:\n{instruction}\n[button] Search [button_]\n"
    actions = oracle_actions(env.shop, 3)
    results, *_ = env.step(actions[0])
    asin = env.shop.goals[3]["asin"]
    assert f"\n[button] {asin} [button_]\n" in results and "[button] Back to Search [button_]\n" in results
    page, *_ = env.step(f"click[{asin.lower()}]")
    product = env.shop.by_asin[asin]
    group, values = next(iter(product["options"].items()))
    assert f"{group}\n" + "".join(f"  [button] {v} [button_]\n" for v in values) in page
    assert page.endswith("[button] Reviews [button_]\n[button] Buy Now [button_]\n")
    value = values[-1]
    clicked, _, _, _, info = env.step(f"click[{value}]")
    assert clicked != page and info["valid"]
    assert clicked.startswith(f"You have clicked {value}.\n")
    assert f"  [clicked button] {value} [clicked button_]\n" in clicked
    assert clicked.count("[clicked button]") == 1
    # another value of the same group replaces it; the visited product is marked back on the results
    other, *_ = env.step(f"click[{values[0]}]")
    assert other.startswith(f"You have clicked {values[0]}.\n") and other.count("[clicked button]") == 1
    back, *_ = env.step("click[< prev]")
    assert f"\n[clicked button] {asin} [clicked button_]\n" in back
    assert back.count("[clicked button]") == 1
    # the env state is the same in both formats (GiGPO's anchor states do not depend on it)
    plain = WebShopEnv(split="test")
    plain.reset(options={"task_id": "3"})
    for a in [actions[0], f"click[{asin.lower()}]", f"click[{value}]"]:
        _, _, _, _, plain_info = plain.step(a)
    assert plain_info["state_key"] == info["state_key"]
    check_env(env, other=WebShopEnv(split="test", observation="text_rich"))
    with pytest.raises(ValueError, match="observation must be one of"):
        WebShopEnv(split="test", observation="html")


def test_oracle_buys_with_reward_one_and_done_page(env):
    obs, info = env.reset(options={"task_id": "3"})
    for a in oracle_actions(env.shop, 3):
        obs, reward, term, trunc, info = env.step(a)
    assert (reward, term, trunc, info["success"]) == (1.0, True, False, True)
    assert info["reward_info"]["r_type"] == 1.0
    asin = env.shop.goals[3]["asin"]
    value = env.shop.goals[3]["goal_options"][0]
    group = next(g for g, vals in env.shop.by_asin[asin]["options"].items() if value in vals)
    assert obs.startswith(
        "Thank you for shopping with us! [SEP] Your code: [SEP] None [SEP] "
        f"(Paste it in your MTurk interface.) [SEP] Purchased [SEP] asin [SEP] {asin} [SEP] options "
        f'[SEP] {{"{group}": "{value}"}} [SEP] attrs [SEP] None'
    )
    assert obs.endswith(
        " [SEP] Reward [SEP] Your score (min 0.0, max 1.0) [SEP] 1.0 [SEP] Reward Details [SEP] None"
    )
    assert info["admissible_actions"] == []


@pytest.mark.parametrize(
    "action",
    [
        "buy now",
        "click[search]",
        "click[not a button]",
        "search[]",
        "search[   ]",
        "",
        "click[]",
        "jump[x]",
        "click[b0000000000]",
        "<script>alert(1)</script>",
        "click[buy now",
        "\x00\n",
    ],
)
def test_invalid_actions_are_noops(env, action):
    obs, info = env.reset(options={"task_id": "1"})
    env.step("search[kettle]")
    page_obs = env._last_obs
    key = env.session.state
    obs, reward, term, _trunc, info = env.step(action)
    assert (obs, reward, term, info["valid"], info["success"]) == (page_obs, 0.0, False, False, False)
    assert env.session.state == key


def test_search_only_where_a_search_box_is_shown(env):
    to_results(env)
    obs, _, _, _, info = env.step("search[kettle]")
    assert not info["valid"]
    obs, _, _, _, info = env.step("click[back to search]")
    assert obs.startswith("WebShop [SEP] ") and info["valid"]
    obs, _, _, _, info = env.step("search[Kettle  Glass]")
    assert info["valid"] and "Page 1" in obs


def test_options_json_is_jinja_tojson():
    assert (
        options_json({"size": "m", "color": "<b>&'"})
        == '{"color": "\\u003cb\\u003e\\u0026\\u0027", "size": "m"}'
    )


def test_parse_action():
    assert parse_action(" click[Buy Now] ") == ("click", "buy now")
    assert parse_action("search[red [big] shoes]") == ("search", "red [big] shoes")
    assert parse_action("click") is None


def test_truncation_at_max_steps():
    e = WebShopEnv(split="test", max_steps=3)
    e.reset(options={"task_id": "0"})
    outs = [e.step("click[nothing]") for _ in range(3)]
    assert [o[3] for o in outs] == [False, False, True] and not any(o[2] for o in outs)


def test_task_id_errors(env):
    with pytest.raises(ValueError, match="not in split 'test'"):
        env.reset(options={"task_id": "600"})
    for bad in ("abc", "-1", "7.0", 7.0, True, "\u0667"):
        with pytest.raises(
            ValueError,
            match=r"WebShop task_id .* is not in split 'test': it must be a goal index in 0\.\.499",
        ):
            env.reset(options={"task_id": bad})
    assert env.reset(options={"task_id": 7})[1]["task_id"] == "7"


def test_group_resets_identical():
    a, b = WebShopEnv(split="test"), WebShopEnv(split="test")
    actions = oracle_actions(a.shop, 42)[:2] + [
        "click[description]",
        "click[< prev]",
        "click[back to search]",
    ]
    ta = [a.reset(seed=5, options={"task_id": "42"})[0]] + [a.step(x)[0] for x in actions]
    tb = [b.reset(seed=9, options={"task_id": "42"})[0]] + [b.step(x)[0] for x in actions]
    assert ta == tb
    assert a.reset(seed=3)[1]["task_id"] == a.reset(seed=3)[1]["task_id"]


@pytest.mark.parametrize("search", ["title", "instruction"])
def test_oracle_solves_every_test_goal(env, search):
    results = [
        run_episode(env, scripted_policy(oracle_actions(env.shop, int(t), search=search)), t)
        for t in env.task_ids()
    ]
    assert all(r["success"] and r["reward"] == 1.0 for r in results)
    assert max(r["steps"] for r in results) <= env.max_steps


def test_instruction_oracle_plays_the_listed_search_and_falls_back_to_the_title(env):
    """The instruction search is the one the env lists, so a policy choosing among the admissible
    actions can copy the demonstration; where it misses the product, the oracle searches the name."""
    _, info = env.reset(options={"task_id": "7"})
    first = oracle_actions(env.shop, 7, search="instruction")[0]
    assert info["admissible_actions"] == [first] != [oracle_actions(env.shop, 7)[0]]
    goal = env.shop.goals[7]
    product = env.shop.by_asin[goal["asin"]]
    missing = dict(goal, instruction_text="i want a " + "zzz qqq " * 3)
    env.shop.goals[7] = missing
    try:
        assert (
            oracle_actions(env.shop, 7, search="instruction")[0]
            == f"search[{product['Title'].lower().strip()}]"
        )
    finally:
        env.shop.goals[7] = goal
    with pytest.raises(ValueError, match="search must be 'title' or 'instruction'"):
        oracle_actions(env.shop, 7, search="asin")


def test_random_agent_is_far_below_the_oracle(env):
    policy = random_policy(0)
    results = [run_episode(env, policy, t) for t in env.task_ids()[:200]]
    success = sum(r["success"] for r in results) / len(results)
    mean = sum(r["reward"] for r in results) / len(results)
    assert 0.0 <= success < 0.1 and 0.05 < mean < 0.6


def test_repeated_searches_and_pages_come_from_the_caches(env, monkeypatch):
    """What keeps the text env fast (bench/webshop_speed.py prints its steps/s): BM25 ranks each
    keywords string once per process, and each env builds a results page once."""
    engine = env.shop.search
    ranked, built = [], []
    get_scores, search = engine._bm25.get_scores, engine.search
    monkeypatch.setattr(
        engine._bm25,
        "get_scores",
        lambda tokens, *a, **k: ranked.append(tokens) or get_scores(tokens, *a, **k),
    )
    monkeypatch.setattr(
        engine, "search", lambda keywords, *a, **k: built.append(keywords) or search(keywords, *a, **k)
    )
    fresh = uuid.uuid4().hex  # a word no search has used, so the first pass cannot hit the cache
    episodes = {}
    for goal in range(8):
        title = env.shop.by_asin[env.shop.goals[goal]["asin"]]["Title"].lower()
        hit = env.shop.search.search(f"{title} first{fresh}")[0].lower()
        episodes[str(goal)] = [
            f"search[{title} {fresh}]",
            "click[next >]",
            "click[< prev]",
            f"click[{hit}]",
            "click[< prev]",
            f"click[{hit}]",
            "click[buy now]",
        ]
    ranked.clear(), built.clear()

    def play_all(e):
        return [run_episode(e, scripted_policy(actions), t) for t, actions in episodes.items()]

    first = play_all(env)
    assert len(ranked) == len(
        episodes
    )  # one ranking per keywords, though each results page was shown 3 times
    assert len(built) == 2 * len(episodes)  # results pages 1 and 2 of each search, built once each
    ranked.clear(), built.clear()
    assert play_all(env) == first and ranked == [] and built == []  # the same episodes again: all cached
    assert play_all(WebShopEnv(split="test")) == first and ranked == [] and len(built) == 2 * len(episodes)


def test_module_entry_generates_loadable_files(tmp_path, capsys):
    from agentrl.envs.webshop import load_files, serve
    from agentrl.envs.webshop.__main__ import main

    main(["generate", str(tmp_path), "--num-products", "60", "--goals-per-product", "2", "--seed", "4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "items_human_ins.json",
        "items_ins_v2_60.json",
        "items_shuffle_60.json",
        "reviews.json",
    ]
    assert len(load_files(tmp_path).goals) == 120
    assert callable(serve)
    env = WebShopEnv(split="test", data_dir=str(tmp_path))
    assert len(env.task_ids()) == 120


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.lists(st.integers(0, 40), max_size=6), junk=st.text(max_size=40))
def test_validity_agrees_with_admissible_actions(env, prefix, junk):
    """An action is valid iff it is an admissible click or a non-empty search where a box is shown."""
    obs, info = env.reset(options={"task_id": "9"})
    for pick in prefix:
        acts = info["admissible_actions"]
        obs, _, term, _, info = env.step(acts[pick % len(acts)])
        assert info["valid"]
        if term:
            return
    has_search = any(a.startswith("search[") for a in info["admissible_actions"])
    for action in (junk, f"click[{junk}]"):
        parsed = parse_action(action)
        expected = parsed is not None and (
            f"{parsed[0]}[{parsed[1]}]" in info["admissible_actions"]
            or (parsed[0] == "search" and bool(parsed[1]) and has_search)
        )
        before, state = obs, env.session.state
        obs, reward, term, _, step_info = env.step(action)
        assert step_info["valid"] == expected, action
        if not expected:
            assert obs == before and env.session.state == state and reward == 0.0
        if expected:
            return
