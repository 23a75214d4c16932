"""A small generic registry by name; adapters arrive here, also from entry points."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from harness.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Items by name, with entry points of `group` loaded on first lookup."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._loaded = group is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@adapters.register("reference")` on the class."""

        def deco(item: T) -> T:
            self._items[name] = item
            return item

        return deco

    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        assert self.group is not None
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                raise ConfigError(
                    f"{self.kind} {ep.name!r} from entry point {ep.value!r} failed to load: "
                    f"{type(exc).__name__}: {exc}; fix or uninstall the package providing it"
                ) from exc

    def get(self, name: str) -> T:
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(
                f"{self.kind} {name!r} is not registered; known: {known}"
            ) from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items


adapters: Registry[type] = Registry("adapter", group="im_harness.adapters")
