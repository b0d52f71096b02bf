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


class FieldError(ValueError):
    """A bad value of one field of an entry's spec section (``params.arch``, ``weights``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise FieldError("low", f"{low} is greater than high ({high})")
    if log and low <= 0:
        raise FieldError("low", f"a log range needs low > 0, got {low}")


@dataclass(frozen=True)
class IntRange:
    """An integer search range: what an operator declares, and what a spec's ``{low, high}`` of integers is."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        check_range(self.low, self.high, self.log)


@dataclass(frozen=True)
class FloatRange:
    """A float search range (``log``: sampled on a log scale)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        check_range(self.low, self.high, self.log)


@dataclass(frozen=True)
class Choice:
    """A categorical choice: what an operator declares, and what a spec's list is."""

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise FieldError("", "a list of choices must not be empty")


# A search space, wherever it is declared or written: a range or a choice. A plain value is fixed.
ParamSpace = IntRange | FloatRange | Choice
RANGE_FIELDS = ("low", "high", "log")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_space(value: Any) -> Any:
    """A value as a spec writes it: ``{low, high, log}`` -> ``IntRange`` (two integers) or
    ``FloatRange``, a list -> ``Choice``, a number or string -> itself (fixed). ``FieldError`` otherwise."""
    if isinstance(value, dict):
        for key in value:
            if key not in RANGE_FIELDS:
                raise FieldError(str(key), "unknown field (check its spelling and indentation)")
        for key in ("low", "high"):
            if key not in value:
                raise FieldError(key, "required field is missing")
            if not is_number(value[key]):
                raise FieldError(key, f"expected a number, got {value[key]!r}")
        log = value.get("log", False)
        if not isinstance(log, bool):
            raise FieldError("log", f"expected true or false, got {log!r}")
        if isinstance(value["low"], int) and isinstance(value["high"], int):
            return IntRange(value["low"], value["high"], log)
        return FloatRange(float(value["low"]), float(value["high"]), log)
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, float, str, bool)) for v in value):
            raise FieldError("", f"choices must be numbers or strings, got {list(value)}")
        return Choice(tuple(value))
    if isinstance(value, (int, float, str, bool)):
        return value
    raise FieldError("", f"expected a value, a {{low, high}} range or a list of choices, got {value!r}")


def is_searched(value: Any) -> bool:
    return isinstance(value, (IntRange, FloatRange, Choice))


def default_of(value: Any) -> Any:
    """The value a search starts from: a range's middle (geometric on a log scale), a choice's
    first, or the fixed value."""
    if isinstance(value, (IntRange, FloatRange)):
        middle = (value.low * value.high) ** 0.5 if value.log else (value.low + value.high) / 2
        return round(middle) if isinstance(value, IntRange) else float(middle)
    if isinstance(value, Choice):
        return value.choices[0]
    return value


def values_of(value: Any) -> list[Any]:
    """The values a space can take at its edges (both ends of a range, every choice), or the fixed value."""
    if isinstance(value, (IntRange, FloatRange)):
        return [value.low, value.high]
    if isinstance(value, Choice):
        return list(value.choices)
    return [value]


@dataclass
class Entry(Generic[T]):
    """One registered factory with the tunable parameters it declares."""

    name: str
    factory: T
    params: dict[str, ParamSpace] = field(default_factory=dict)
    per_member: dict[str, ParamSpace] = field(default_factory=dict)
    doc: str = ""
    facts: Any = None  # what else is particular to this name (timm's default_cfg): checks, files, requirements


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
        facts: Any = None,
    ) -> Callable[[T], T]:
        """Decorator: register ``factory`` under ``name``.

        ``params`` are tunable once per trial; ``per_member`` ones once for each member
        taking part, and reach the factory as a list in member order. ``facts`` is what the
        registry's kind says of each entry besides building it (``MemberFacts``, ``SourceFacts``).
        """

        def decorate(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            doc = (factory.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(
                name, factory, dict(params or {}), dict(per_member or {}), doc[0] if doc else "", facts
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
