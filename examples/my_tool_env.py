"""A new tool environment in one file: tools + tasks + a reward function."""

from agentrl.envs import check_env, make, register_env
from agentrl.envs.tools import Episode, ToolEnv, ToolTask, tool

TEMPERATURES = {"Oslo": -3.5, "Lima": 19.0, "Cairo": 24.5}


@tool
def get_temperature(city: str) -> float:
    """Today's temperature in a city, in degrees Celsius.

    Args:
        city: the city name, e.g. "Oslo"
    """
    if city not in TEMPERATURES:
        raise KeyError(f"no weather station in {city!r}")
    return TEMPERATURES[city]


PAIRS = [("Oslo", "Lima"), ("Lima", "Cairo"), ("Cairo", "Oslo")]
PROMPT = "Which is warmer today, {} or {}? Reply with the city only."
TASKS = [ToolTask(f"{a}-{b}", PROMPT.format(a, b), answer=max(a, b, key=TEMPERATURES.get)) for a, b in PAIRS]


def reward(task: ToolTask, episode: Episode) -> float:
    """1 for the warmer city, but only if the agent looked up both temperatures."""
    looked_up = {call.arguments.get("city") for call in episode.calls if call.ok}
    return float(episode.answer == task.answer and set(task.id.split("-")) <= looked_up)


def weather_env(**kwargs) -> ToolEnv:
    return ToolEnv([get_temperature], TASKS, reward, max_turns=4, **kwargs)


register_env("weather", weather_env, overwrite=True)  # now make("weather") works, e.g. in a config

if __name__ == "__main__":
    check_env(make("weather"))
    print("weather env passes check_env")
