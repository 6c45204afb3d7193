"""The env contract: FreeText spaces, the registry, gymnasium ids, and what check_env catches."""

import gymnasium as gym
import pytest

from agentrl.envs import (
    AgentEnv,
    EnvCheckError,
    EnvSupport,
    FreeText,
    check_env,
    gym_id,
    list_envs,
    make,
    register_env,
)


class CountEnv(AgentEnv):
    """Count to a target: "inc" adds one, "dec" subtracts one; reaching target wins."""

    def __init__(self, target: int = 3, flaw: str | None = None, render_mode=None):
        super().__init__(render_mode=render_mode)
        self.target, self.flaw, self.n, self.t = target, flaw, 0, 0

    def task_ids(self):
        return ["count-3"]

    def _info(self, **kw):
        info = {"state_key": f"n={self.n}", "admissible_actions": ["inc", "dec"]}
        if self.flaw == "no_state_key":
            del info["state_key"]
        info.update(kw)
        return info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n = int(self.np_random.integers(0, 2)) if self.flaw == "random_start" else 0
        self.t = 0
        self._last_obs = f"n is {self.n}"
        return self._last_obs, self._info()

    def step(self, action):
        if self.flaw == "raises" and action not in ("inc", "dec"):
            raise ValueError("cannot parse")
        valid = action in ("inc", "dec") or self.flaw == "accepts_anything"
        if action == "inc":
            self.n += 1
        elif action == "dec":
            self.n -= 1
        if self.flaw == "nondeterministic":  # hidden state that survives reset: replays differ
            self.drift = getattr(self, "drift", 0) + 1
            self.n += self.drift
        self.t += 1
        won = self.n == self.target
        self._last_obs = f"n is {self.n}" if valid else "Nothing happens."
        return self._last_obs, float(won), won, self.t >= 10 and not won, self._info(valid=valid, success=won)


def test_free_text_accepts_any_unicode_within_length():
    space = FreeText(10)
    assert space.contains("héllo 世界!")
    assert not space.contains("x" * 11)
    assert not space.contains(3)
    space.seed(0)
    assert all(space.contains(space.sample()) for _ in range(20))


def test_check_env_passes_a_correct_env():
    check_env(CountEnv(), other=CountEnv())


@pytest.mark.parametrize(
    ("flaw", "message"),
    [
        ("no_state_key", "lacks required key"),
        ("nondeterministic", "(?i)not deterministic|not equivalent"),
        ("raises", "must be a no-op"),
        ("accepts_anything", "valid'\\] == False"),
    ],
)
def test_check_env_catches_contract_breaks(flaw, message):
    with pytest.raises(AssertionError, match=message):
        check_env(CountEnv(flaw=flaw), skip_gymnasium=flaw in ("raises", "no_state_key"))


def test_check_env_says_what_the_env_supports():
    assert check_env(CountEnv(), other=CountEnv()) == EnvSupport(
        group_resets=True, admissible_actions=True, turn_reward=False, task_ids=True, resume=("replay",)
    )
    # an env that cannot replay a seed fails the default check, and is reported with group_resets=False
    with pytest.raises(EnvCheckError, match="not deterministic"):
        check_env(CountEnv(flaw="nondeterministic"), skip_gymnasium=True)
    support = check_env(CountEnv(flaw="nondeterministic"), group_resets=False)
    assert support == EnvSupport(  # without group resets, no replay: resume is empty
        group_resets=False, admissible_actions=True, turn_reward=False, task_ids=True, resume=()
    )
    assert not check_env(CountEnv(), other=CountEnv(target=1), group_resets=False).group_resets


def test_check_env_notices_instances_that_differ():
    with pytest.raises(EnvCheckError, match="two instances"):
        check_env(CountEnv(), other=CountEnv(target=1))


def test_registry_make_and_gymnasium_ids():
    assert gym_id("webshop-browser") == "agentrl/WebShopBrowser-v0"
    assert gym_id("alfworld") == "agentrl/ALFWorld-v0"
    assert gym_id("maze") == "agentrl/Maze-v0"
    assert {"maze", "alfworld", "webshop", "webshop-browser"} <= set(list_envs())
    register_env("test-count", CountEnv)  # undone after the test, gymnasium id included (conftest)
    env = make("test-count", target=2)
    assert isinstance(env, CountEnv) and env.target == 2
    genv = gym.make("agentrl/TestCount-v0", target=2)
    obs, info = genv.reset(seed=1)
    assert obs == "n is 0" and info["state_key"] == "n=0"
    with pytest.raises(ValueError, match="already registered"):
        register_env("test-count", CountEnv)
    with pytest.raises(KeyError, match="unknown env 'nope'; available: .*maze"):
        make("nope")


def test_render_mode_ansi_and_bad_render_mode():
    env = CountEnv(render_mode="ansi")
    env.reset(seed=0)
    env.step("inc")
    assert env.render() == "n is 1"
    with pytest.raises(ValueError, match="render_mode 'human'"):
        CountEnv(render_mode="human")
