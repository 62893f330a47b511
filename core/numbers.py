"""Numbers with a range: the one check of a numeric flag and of a numeric environment variable.

:class:`Number` is the ``type=`` of every numeric flag (``helper.options``) and the parser of every numeric
environment variable (``core.env``), so both refuse the same values with the same words (``must be ..., got X``).

Bottom layer: imports nothing from the project but ``core.errors``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from core.errors import UserError

INT64_MAX = 2**63 - 1  # the largest seed (and count) torch and numpy take; beyond it they raise OverflowError


class Number:
    """The ``type=`` of a numeric flag, carrying its range: ``Number(int, low=1)`` (a whole number, at least 1),
    ``Number(float, low=0, low_open=True)`` (a finite positive number). NaN and infinity are never accepted, whole
    numbers are at most :data:`INT64_MAX` unless ``high`` says otherwise.

    argparse calls it on the flag's text (a bad value: one sentence, exit 2); :meth:`check` applies the same range to a
    value a Python caller gave :class:`helper.config.StudentConfig` (raises UserError), so both read
    ``--flag must be ..., got X``.
    """

    def __init__(self, kind: type, *, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, why: str = "") -> None:
        self.kind, self.low, self.low_open, self.high_open, self.why = kind, low, low_open, high_open, why
        self.high = INT64_MAX if high is None and kind is int else high
        self.__name__ = "whole number" if kind is int else "number"  # argparse names the type in some messages

    def __repr__(self) -> str:
        return f"Number({self.kind.__name__}, {self.describe()})"

    def describe(self) -> str:
        """The range in words, as the error messages and the tests say it."""
        low, high = self.low, self.high
        if high is not None and self.kind is int and high == INT64_MAX:
            high = None  # the implicit bound of whole numbers is named only when it is crossed
        if self.kind is int:
            if low is not None:
                return f"at least {low}" + (f" and at most {high}" if high is not None else "")
            return "a whole number" + (f" of at most {high}" if high is not None else "")
        if low is not None and high is not None and self.low_open and self.high_open:
            return f"strictly between {low:g} and {high:g}"
        if low == 0:
            text = "a finite positive number" if self.low_open else "a finite number, 0 or more"
            return text + (f", {'below' if self.high_open else 'at most'} {high:g}" if high is not None else "")
        if low is not None and high is not None:
            return f"between {low:g} and {high:g}"
        if low is not None:
            return f"a finite number {'above' if self.low_open else 'at least'} {low:g}"
        return "a finite number"

    def problem(self, value: float) -> str | None:
        """Why ``value`` is refused (``must be ..., got X``), or None."""
        ok = math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if ok:
            return None
        if self.kind is int and self.high is not None and value > self.high and self.high == INT64_MAX:
            return f"must be at most {INT64_MAX} (2**63 - 1){self.why}, got {value}"
        return f"must be {self.describe()}{self.why}, got {value}"

    def __call__(self, text: str) -> int | float:
        try:
            number = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if self.kind is int else 'a number'}, "
                                             f"got '{text}'") from None
        if self.kind is int:
            if not math.isfinite(number) or number != int(number):
                raise argparse.ArgumentTypeError(f"must be a whole number, got '{text}'")
            try:  # "12345678901234567890" keeps its digits; 2.0 (as W&B writes grid integers) is 2
                value: int | float = int(text)
            except ValueError:
                value = int(number)
        else:
            value = number
        why = self.problem(value)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value

    def check(self, flag: str, value: Any) -> None:
        """The parser's check of ``value`` for a Python caller (raises UserError)."""
        if value is not None:
            why = self.problem(value)
            if why:
                raise UserError(f"--{flag} {why}")
