"""String registries: envs, estimators, losses and policies are looked up by name.

One small class so that adding a component is one decorated definition in one file,
and an unknown name fails with the list of names that do exist.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_ALL: weakref.WeakSet[Registry[Any]] = weakref.WeakSet()


class Registry(Generic[T]):
    """A named table of components of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        _ALL.add(self)

    def register(self, name: str, item: T, *, overwrite: bool = False) -> T:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and not overwrite:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (pass overwrite=True to replace it)"
            )
        self._items[name] = item
        return item

    def decorator(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        def wrap(item: T) -> T:
            return self.register(name, item, overwrite=overwrite)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    @contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Registrations (and replacements) made inside the block are undone when it ends (tests)."""
        saved = dict(self._items)
        try:
            yield self
        finally:
            self._items.clear()
            self._items.update(saved)


def all_registries() -> list[Registry[Any]]:
    """Every registry created so far (the test suite scopes them all)."""
    return list(_ALL)
