"""Name -> class registries: config names select implementations without if/elif chains.

A registry may also know names before their classes are imported: ``modules`` maps each name to
the module whose import registers it. Listing and validating names then costs no import (no
torch for ``fedlora list`` or config checks); ``get`` imports the module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes registered under config names; ``key`` is the config key that selects one."""

    def __init__(self, key: str, modules: Mapping[str, str] | None = None) -> None:
        self.key = key
        self.modules = dict(modules or {})
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            self._classes[name] = cls
            return cls

        return decorate

    def available(self) -> list[str]:
        return sorted(self._classes.keys() | self.modules.keys())

    def get(self, name: str) -> type[T]:
        if name not in self._classes and name in self.modules:
            importlib.import_module(self.modules[name])
        try:
            return self._classes[name]
        except KeyError:
            raise ValueError(
                f"{self.key}: unknown name {name!r}; available: {', '.join(self.available())}"
            ) from None
