"""WebShop, faithful and offline: generated catalogue, original reward, text env, HTML site, browser env.

``make("webshop", split="test")`` is the text env; ``make("webshop-browser", ...)`` drives the same
pages served as HTML in a real Chromium. See the WebShop section of docs/envs.md.
"""

from typing import Any

from agentrl.envs.webshop.browser_env import WebShopBrowserEnv
from agentrl.envs.webshop.catalogue import generate_catalogue, write_catalogue
from agentrl.envs.webshop.loader import Shop, WebShopDataError, load_files, load_shop
from agentrl.envs.webshop.reward import RewardConfig, get_reward
from agentrl.envs.webshop.text_env import WebShopEnv

__all__ = [
    "RewardConfig",
    "ServerThread",
    "Shop",
    "WebShopBrowserEnv",
    "WebShopDataError",
    "WebShopEnv",
    "create_app",
    "generate_catalogue",
    "get_reward",
    "load_files",
    "load_shop",
    "serve",
    "write_catalogue",
]

_SITE_NAMES = ("ServerThread", "create_app", "serve")


def __getattr__(name: str) -> Any:
    # the site needs fastapi/uvicorn; import it only when asked for, so the text env stays light
    if name in _SITE_NAMES:
        from agentrl.envs.webshop import site

        return getattr(site, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
