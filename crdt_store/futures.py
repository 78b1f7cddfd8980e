"""Handing a callback's outcome to an awaiting coroutine."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


def settle(future: asyncio.Future[T], outcome: T | BaseException) -> None:
    """Make `outcome` what awaiting `future` gives: raised if it is an exception, else
    returned. Nothing if `future` is done already (its awaiter was cancelled: the work it asked
    for went on, and its outcome has nobody to hear it)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
