"""WebShopBrowserEnv: real Debian Chromium (Playwright) against the real site on 127.0.0.1."""

import random

import pytest

from agentrl.envs import check_env, make
from agentrl.envs.webshop import WebShopBrowserEnv, WebShopEnv
from agentrl.envs.webshop.agents import oracle_actions
from agentrl.envs.webshop.browser_env import css_string
from agentrl.envs.webshop.site import ServerThread, create_app


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app("test")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser_env(server):
    env = WebShopBrowserEnv("test", base_url=server.url)
    yield env
    env.close()


@pytest.fixture(scope="module")
def text_env():
    return WebShopEnv("test")


def play(env, goal, actions):
    obs, info = env.reset(options={"task_id": str(goal)})
    out = [(obs, info["state_key"], info["admissible_actions"])]
    for a in actions:
        obs, reward, term, trunc, info = env.step(a)
        out.append(
            (
                obs,
                reward,
                term,
                trunc,
                info["valid"],
                info["success"],
                info["state_key"],
                info["admissible_actions"],
            )
        )
        if term:
            break
    return out


def detour_actions(shop, goal):
    """Oracle actions with detours, invalid actions and a wrong option: exercises every page kind."""
    acts = oracle_actions(shop, goal)
    product = shop.by_asin[shop.goals[goal]["asin"]]
    first_value = next(iter(product["options"].values()))[0]
    return (
        ["click[buy now]", "search[ ]", acts[0], "search[again]", "click[next >]", "click[< prev]"]
        + acts[1:-1]
        + [
            "click[description]",
            "click[features]",
            "click[reviews]",
            "click[< prev]",
            f"click[{first_value}]",
            "click[not here]",
            "<script>x</script>",
            "click[buy now]",
        ]
    )


@pytest.mark.parametrize("goal", [0, 3, 11])
def test_same_actions_same_rewards_and_pages(browser_env, text_env, goal):
    actions = detour_actions(text_env.shop, goal)
    assert play(browser_env, goal, actions) == play(text_env, goal, actions)


def test_oracle_in_the_browser(browser_env, text_env):
    for goal in (5, 8):
        *_, last = play(browser_env, goal, oracle_actions(text_env.shop, goal))
        assert last[1:6] == (1.0, True, False, True, True)


def test_partial_reward_matches(browser_env, text_env):
    # buy the first search hit for a different product type: a reward strictly between 0 and 1 or 0
    actions = [
        "search[black]",
        "click[" + text_env.shop.search.search("black")[0].lower() + "]",
        "click[buy now]",
    ]
    b, t = play(browser_env, 2, actions), play(text_env, 2, actions)
    assert b == t and b[-1][2] is True and b[-1][1] == t[-1][1] < 1.0


def test_css_string_escapes_quotes():
    assert css_string('a"b\\c') == '"a\\"b\\\\c"'
    assert css_string("x\ny") == '"x\\a y"'


def test_an_action_is_one_request_and_an_invalid_one_none(browser_env, text_env):
    """What keeps click-to-observation short (bench/webshop_speed.py prints the milliseconds): a
    valid action is one POST answered with the new page (no redirect, nothing else fetched) and an
    invalid action sends nothing."""
    sent = []

    def record(request):
        sent.append(request)

    page = browser_env._page
    page.on("request", record)
    seen = {True: 0, False: 0}
    try:
        for goal in (20, 21):
            browser_env.reset(options={"task_id": str(goal)})
            for a in detour_actions(text_env.shop, goal):
                sent.clear()
                valid = browser_env.step(a)[4]["valid"]
                seen[valid] += 1
                assert [(r.method, r.resource_type) for r in sent] == (
                    [("POST", "document")] if valid else []
                ), a
    finally:
        page.remove_listener("request", record)
    assert seen[True] > 10 and seen[False] > 5


@pytest.mark.slow
def test_check_env_and_make_with_own_server():
    env = make("webshop-browser", split="test", max_steps=6)
    try:
        assert env.base_url.startswith("http://127.0.0.1:")
        check_env(env, max_steps=6)
    finally:
        env.close()


def test_goal_choice_same_as_text_env(browser_env, text_env):
    """Both envs pick goals through one function: same seeded draws, same refusals."""
    for seed in (0, 1, 2):
        assert browser_env.reset(seed=seed)[1]["task_id"] == text_env.reset(seed=seed)[1]["task_id"]
    for bad in ("500", "x"):
        errors = []
        for env in (browser_env, text_env):
            with pytest.raises(ValueError, match="it must be a goal index in 0..499") as e:
                env.reset(options={"task_id": bad})
            errors.append(str(e.value))
        assert errors[0] == errors[1]


def test_missing_chromium_is_a_clear_error(server):
    with pytest.raises(FileNotFoundError, match="Chromium not found at /nonexistent/chromium"):
        WebShopBrowserEnv("test", base_url=server.url, executable_path="/nonexistent/chromium")


def test_random_walks_agree(browser_env, text_env):
    """Random admissible actions (seeded), replayed in both front-ends, give identical transcripts."""
    for goal, seed in ((30, 1), (31, 2)):
        rng = random.Random(seed)
        _obs, info = text_env.reset(options={"task_id": str(goal)})
        actions = []
        for _ in range(12):
            action = rng.choice(info["admissible_actions"])
            actions.append(action)
            _obs, _, term, _, info = text_env.step(action)
            if term:
                break
        assert play(browser_env, goal, actions) == play(text_env, goal, actions)
