"""Small name -> factory registries (the timm ``register_model`` pattern).

Members and fusion operators are looked up by the name a spec gives, so adding
one is one decorated function or class; validation lists the known names when a
spec asks for one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class UnknownName(LookupError, ValueError):
    """A name no factory is registered under (a ValueError, so spec validation reports it)."""


@dataclass(frozen=True)
class IntRange:
    """An integer search range for an operator or member parameter."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    """A float search range for an operator or member parameter."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """A categorical choice for an operator or member parameter."""

    choices: tuple[Any, ...]


ParamSpace = IntRange | FloatRange | Choice


@dataclass
class Entry(Generic[T]):
    """One registered factory with the tunable parameters it declares."""

    name: str
    factory: T
    params: dict[str, ParamSpace] = field(default_factory=dict)
    per_member: dict[str, ParamSpace] = field(default_factory=dict)
    doc: str = ""


class Registry(Generic[T]):
    """A named collection of factories; ``kind`` is used in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        params: dict[str, ParamSpace] | None = None,
        per_member: dict[str, ParamSpace] | None = None,
    ) -> Callable[[T], T]:
        """Decorator: register ``factory`` under ``name``.

        ``params`` are tunable once per trial; ``per_member`` ones once for each member
        taking part, and reach the factory as a list in member order.
        """

        def decorate(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            doc = (factory.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(
                name, factory, dict(params or {}), dict(per_member or {}), doc[0] if doc else ""
            )
            return factory

        return decorate

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``; ``UnknownName`` listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
