"""The one number check: a real int or number (never a bool, never NaN or infinite), in range.

``True`` is an ``int`` to Python and ``nan`` compares false with everything, so a plain
``isinstance`` and a range test let both through. Every option that takes a count, a size,
a rate or a bounded number asks :func:`check_number` instead of writing that test again.
Ground module: imports only :mod:`.errors`.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ValidationError

__all__ = ["check_number", "is_number"]


def is_number(value: Any, *, integer: bool = False) -> bool:
    """True when ``value`` is an int (or, unless ``integer``, a finite float), not a bool."""
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    above: float | None = None,
) -> None:
    """Raise :class:`~fish_notebook.errors.ValidationError` unless ``value`` is a number
    (an int when ``integer``) with ``low <= value <= high`` and ``value > above`` (a bound
    left None is open).

    The message names the field and the range: ``must be an int in 100..300``,
    ``must be an int >= 1``, ``must be a number > 0``.
    """
    kind = "an int" if integer else "a number"
    bounds = []
    if low is not None and high is not None:
        bounds.append(f"in {low:g}..{high:g}")
    elif low is not None:
        bounds.append(f">= {low:g}")
    elif high is not None:
        bounds.append(f"<= {high:g}")
    if above is not None:
        bounds.append(f"> {above:g}")
    allowed = " ".join([f"must be {kind}", *bounds])
    if not is_number(value, integer=integer) or not (
        (low is None or value >= low)
        and (high is None or value <= high)
        and (above is None or value > above)
    ):
        raise ValidationError(name, value, allowed)
