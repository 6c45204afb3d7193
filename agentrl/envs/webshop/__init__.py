"""WebShop, faithful and offline: generated catalogue, original reward, text env, HTML site, browser env.

``make("webshop", split="test")`` is the text env; ``make("webshop-browser", ...)`` drives the same
pages served as HTML in a real Chromium. See notes/README-webshop.md.
"""

from agentrl.envs.webshop.browser_env import WebShopBrowserEnv
from agentrl.envs.webshop.catalogue import generate_catalogue, write_catalogue
from agentrl.envs.webshop.loader import Shop, WebShopDataError, load_files, load_shop
from agentrl.envs.webshop.reward import get_reward
from agentrl.envs.webshop.text_env import WebShopEnv

__all__ = ["Shop", "WebShopBrowserEnv", "WebShopDataError", "WebShopEnv", "generate_catalogue", "get_reward", "load_files", "load_shop",
           "write_catalogue"]
