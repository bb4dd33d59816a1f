"""Coroutines driven from synchronous tests (hypothesis tests cannot be async)."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end in a new event loop and return its result."""
    return asyncio.run(coroutine)
