"""Name -> class registries: config names select implementations without if/elif chains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes registered under config names; ``key`` is the config key that selects one."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            self._classes[name] = cls
            return cls

        return decorate

    def available(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            raise ValueError(
                f"{self.key}: unknown name {name!r}; available: {', '.join(self.available())}"
            ) from None
