"""What the load decided for one setting: the thing it built (or None) and the line it logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Decision(Generic[T]):
    """``value``: what the load built for the setting (None: nothing); ``reason``: its effective
    value as the load logs it (``false``, ``true``, ``true (detail)``, ``true, no effect: why``).
    """

    value: T
    reason: str

    @classmethod
    def off(cls) -> Decision[None]:
        """The parameter is false: nothing was built."""
        return Decision(None, "false")

    @classmethod
    def no_effect(cls, why: str) -> Decision[None]:
        """The parameter is true but cannot act here; ``why`` says what prevents it."""
        return Decision(None, f"true, no effect: {why}")

    @classmethod
    def on(cls, value: T, detail: str | None = None) -> Decision[T]:
        """The parameter is true and took effect (``detail``: what it did, if worth a word)."""
        return Decision(value, "true" if detail is None else f"true ({detail})")
