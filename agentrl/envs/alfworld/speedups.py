"""Caches for TextWorld's PDDL engine (installed at runtime; site-packages is not edited).

Where the stock engine spends its time (envs.md): every reset re-runs the PDDL->SAS translator
(twice), and every step re-parses, with TatSu, the grammar template of each admissible command
and the query of each grammar rule, and deep-copies every grammar context. These are functions
of their text arguments or copies nobody mutates, so caching them cannot change a transcript (a
test replays games with and without, switching games on one engine, and compares bytes):

- ``fast_downward.pddl2sas``: memoised in memory (LRU) and on disk (compressed pickles under
  the cache dir), so the first load of a validated game skips the translator too;
- template / rule-query / grammar parses: memoised, handing out fresh symbol trees;
- ``Atom.get_fact``: the engine state's atoms decoded into propositions, memoised on the text;
- the reset that follows a game load reuses the initial state the load just built;
- ``copy_context``: copies the ``variables`` and ``mapping`` dicts shallowly (their values,
  entity infos and logic variables, are never mutated during a derivation), and grammar
  symbols are cloned instead of deep-copied with their contexts (which every copy replaces).
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import fast_downward
import textworld.envs.pddl.logic as tw_logic
import textworld.envs.pddl.textgen as textgen
from textworld.envs.pddl.pddl import PddlEnv
from textworld.logic import Rule

from agentrl.envs.alfworld.paths import cache_root

_ORIGINALS: dict[str, Any] = {}
SAS_MEMORY_ENTRIES = 256  # translations kept in memory: two per game, ~1.3 MB each


def _clone(symbol: Any) -> Any:
    """A fresh copy of a parsed grammar symbol tree (what a new TatSu parse would return)."""
    cls = type(symbol)
    if cls is textgen.TerminalSymbol or cls is textgen.NonterminalSymbol:
        return cls(symbol.symbol)
    if cls is textgen.EvalSymbol:
        return cls(symbol.expression)
    if cls is textgen.ListSymbol:
        return cls(_clone(symbol.symbol))
    if cls is textgen.ConditionalSymbol:
        return cls(_clone(symbol.expression), symbol.given)
    if isinstance(symbol, list):
        return [_clone(s) for s in symbol]
    raise TypeError(f"unexpected grammar symbol {symbol!r}")


def _symbol_deepcopy(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """``deepcopy`` for textgen: grammar symbols are cloned directly (their contexts are replaced
    right after every copy), anything else goes to ``copy.deepcopy``."""
    if memo is None:
        try:
            return _clone(obj)
        except TypeError:
            pass
    return copy.deepcopy(obj, memo)


def _memo_symbols(parse: Callable[..., Any]) -> Callable[..., Any]:
    cache: dict[tuple[Any, ...], Any] = {}

    def parse_and_convert(text: str, rule_name: str = "symbols", **kwargs: Any) -> Any:
        key = (text, rule_name, tuple(sorted(kwargs.items())))
        tree = cache.get(key)
        if tree is None:
            tree = cache[key] = parse(text, rule_name=rule_name, **kwargs)
        return _clone(tree)

    return parse_and_convert


# The task rule of an ALFWorld grammar: the only part that differs between games.
_TASK_RHS = re.compile(r'("rhs": "Your task is to: )([^"\\\n]*)(")')


def _memo_logic(parse: Callable[..., Any]) -> Callable[..., Any]:
    """Parse each game grammar once per distinct text, up to its task sentence.

    A grammar's rules are parsed one by one (``ContextSensitiveGrammar.parse``), so swapping the
    task rule of a cached parse for a parse of the new task rule gives what a full parse gives.
    """
    cache: dict[tuple[Any, ...], Any] = {}

    def parse_and_convert(text: str, rule_name: str = "pddlStart", **kwargs: Any) -> Any:
        found = list(_TASK_RHS.finditer(text))
        sentence = found[0].group(2) if len(found) == 1 else None
        template = text if sentence is None else text[: found[0].start(2)] + "\0" + text[found[0].end(2) :]
        key = (template, rule_name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = parse(text, rule_name=rule_name, **kwargs), sentence
        (actions, grammar), parsed_sentence = cache[key]
        fresh = textgen.ContextSensitiveGrammar()
        fresh.update(grammar)  # GameLogic extends its own rule lists; keep the cached ones intact
        if sentence != parsed_sentence:
            fresh._rules["task"] = [
                textgen.ProductionRule(
                    lhs=r.lhs,
                    rhs=textgen._parse_and_convert(f"Your task is to: {sentence}", rule_name="symbols"),
                    weight=r.weight,
                    condition=r.condition,
                )
                for r in grammar._rules["task"]
            ]
        return dict(actions), fresh

    return parse_and_convert


def _memo_query(parse: Callable[[str], Rule]) -> Callable[[str], Rule]:
    cache: dict[str, Rule] = {}

    def parse_conjunctive_query(expr: str) -> Rule:
        rule = cache.get(expr)
        if rule is None:
            rule = cache[expr] = parse(expr)
        return rule

    return parse_conjunctive_query


FACT_CACHE_ENTRIES = 200_000


def _memo_get_fact(get_fact: Callable[..., Any]) -> Callable[..., Any]:
    """Atom -> Proposition, memoised on the atom text and its arguments' types (a fresh state
    of the same game decodes the same thousands of atoms on every reset)."""
    cache: dict[tuple[str, tuple[str, ...]], Any] = {}

    def memo_get_fact(self: Any, name2type: dict[str, str] = {}) -> Any:  # noqa: B006 - mirrors the original
        text = self.name
        args = text.split(" ", 1)[1].split("(", 1)[1][:-1].split(", ")
        key = (text, tuple(name2type[a] for a in args if a))
        fact = cache.get(key)
        if fact is None:
            if len(cache) >= FACT_CACHE_ENTRIES:
                cache.clear()
            fact = cache[key] = get_fact(self, name2type)
        return fact

    return memo_get_fact


class _PristineState:
    """``PddlState`` for the PDDL env: the reset right after a load gets the state that load built.

    ``PddlEnv.load`` builds the initial state (Fast Downward parses both SAS texts into its
    library) and the ``reset`` that must follow builds the very same one again; nothing touches
    it in between (a ``step`` would, so stepping forgets the pending state).
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.pending: tuple[Any, ...] | None = None

    def __call__(self, downward_lib: Any, pddl_problem: str, logic: Any) -> Any:
        pending, self.pending = self.pending, None
        if (
            pending is not None
            and pending[0] is downward_lib
            and pending[1] is pddl_problem
            and pending[2] is logic
        ):
            return pending[3]
        return self.cls(downward_lib, pddl_problem, logic)

    def wrap_load(self, load: Callable[..., Any]) -> Callable[..., Any]:
        def pddl_env_load(env: Any, filename_or_data: Any) -> None:
            load(env, filename_or_data)
            self.pending = (env.downward_lib, env._game_data["pddl_problem"], env._logic, env._pddl_state)

        return pddl_env_load

    def wrap_step(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def pddl_env_step(env: Any, command: str) -> Any:
            self.pending = None
            return step(env, command)

        return pddl_env_step


def _shallow_copy_context(context: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": context["state"],
        "facts": context["facts"],
        "variables": dict(context["variables"]),
        "mapping": dict(context["mapping"]),
        "entity_infos": context["entity_infos"],
    }


def sas_cache_dir() -> str | None:
    """Folder of stored translations; ``AGENTRL_ALFWORLD_SAS_CACHE=0`` keeps them in memory only."""
    if os.environ.get("AGENTRL_ALFWORLD_SAS_CACHE", "1") == "0":
        return None
    return os.path.join(cache_root(), "sas")


def _memo_translator(translate: Callable[..., Any]) -> Callable[..., Any]:
    memory: OrderedDict[str, Any] = OrderedDict()

    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
        key = hashlib.sha256(
            f"{fast_downward.__file__}\0{optimize}\0{domain}\0{problem}".encode()
        ).hexdigest()
        if key in memory:
            memory.move_to_end(key)
            return memory[key]
        folder = sas_cache_dir()
        path = os.path.join(folder, key[:2], key + ".pkl.z") if folder else None
        result = None
        if path and os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    result = pickle.loads(zlib.decompress(f.read()))
            except (OSError, zlib.error, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
                result = None  # a torn or stale file: translate again and overwrite it
        if result is None:
            result = translate(domain, problem, verbose=verbose, optimize=optimize)
            if path:
                _atomic_pickle(path, result)
        memory[key] = result
        if len(memory) > SAS_MEMORY_ENTRIES:
            memory.popitem(last=False)
        return result

    return pddl2sas


def _atomic_pickle(path: str, obj: Any) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(zlib.compress(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), 1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs speed


def enabled() -> bool:
    return bool(_ORIGINALS)


def enable() -> None:
    """Install the caches (idempotent)."""
    if _ORIGINALS:
        return
    _ORIGINALS.update(
        pddl2sas=fast_downward.pddl2sas,
        textgen_parse=textgen._parse_and_convert,
        logic_parse=tw_logic._parse_and_convert,
        copy_context=textgen.copy_context,
        query=Rule.__dict__["parse_conjunctive_query"],
        get_fact=tw_logic.Atom.get_fact,
        deepcopy=textgen.deepcopy,
        state_cls=tw_logic.PddlState,
        env_load=PddlEnv.load,
        env_step=PddlEnv.step,
    )
    fast_downward.pddl2sas = _memo_translator(_ORIGINALS["pddl2sas"])
    textgen._parse_and_convert = _memo_symbols(_ORIGINALS["textgen_parse"])
    tw_logic._parse_and_convert = _memo_logic(_ORIGINALS["logic_parse"])
    textgen.copy_context = _shallow_copy_context
    Rule.parse_conjunctive_query = staticmethod(_memo_query(Rule.parse_conjunctive_query))
    tw_logic.Atom.get_fact = _memo_get_fact(_ORIGINALS["get_fact"])
    textgen.deepcopy = _symbol_deepcopy
    pristine = _PristineState(_ORIGINALS["state_cls"])
    tw_logic.PddlState = pristine
    PddlEnv.load = pristine.wrap_load(_ORIGINALS["env_load"])
    PddlEnv.step = pristine.wrap_step(_ORIGINALS["env_step"])


def disable() -> None:
    """Restore the stock engine (used by the transcript test and the benchmark)."""
    if not _ORIGINALS:
        return
    fast_downward.pddl2sas = _ORIGINALS["pddl2sas"]
    textgen._parse_and_convert = _ORIGINALS["textgen_parse"]
    tw_logic._parse_and_convert = _ORIGINALS["logic_parse"]
    textgen.copy_context = _ORIGINALS["copy_context"]
    Rule.parse_conjunctive_query = _ORIGINALS["query"]
    tw_logic.Atom.get_fact = _ORIGINALS["get_fact"]
    textgen.deepcopy = _ORIGINALS["deepcopy"]
    tw_logic.PddlState = _ORIGINALS["state_cls"]
    PddlEnv.load = _ORIGINALS["env_load"]
    PddlEnv.step = _ORIGINALS["env_step"]
    _ORIGINALS.clear()
