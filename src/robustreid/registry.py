"""A small name -> factory registry, used for datasets and backbones.

Users add their own entries without editing core code::

    from robustreid.data import register_dataset

    @register_dataset("mydata")
    def load_mydata(root, **kwargs):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from robustreid.errors import UnknownNameError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Maps lower-case names to callables (functions or classes).

    Args:
        kind: what the registry holds, used in error messages ("dataset", "backbone").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (case-insensitive)."""
        key = name.lower()

        def decorator(obj: T) -> T:
            if key in self._entries and not overwrite:
                raise KeyError(
                    f"{self.kind} {name!r} is already registered "
                    f"(by {self._entries[key].__module__}.{self._entries[key].__qualname__}); "
                    "pass overwrite=True to replace it"
                )
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The entry registered as ``name``; otherwise an
        :class:`~robustreid.errors.UnknownNameError` (a KeyError) listing the known names."""
        key = name.lower()
        if key not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {known}")
        return self._entries[key]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
