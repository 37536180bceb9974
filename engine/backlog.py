"""A bounded queue from a session's frame loop to one consumer."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Backlog(Generic[T]):
    """A bounded FIFO from the frame loop to one consumer; when full the oldest item goes."""

    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = limit
        self._put = asyncio.Event()
        self._taken = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self.discarded = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.discarded += 1
        self._items.append(item)
        self._put.set()

    def newest(self, depth: int) -> T | None:
        """The item ``depth`` places behind the newest, if there is one."""
        return self._items[-1 - depth] if len(self._items) > depth else None

    async def get(self) -> T | None:
        """The oldest item; None once closed. Raises the error the producer failed with."""
        while not self._items and not self._closed:
            self._put.clear()
            await self._put.wait()
        if self._error is not None:
            raise self._error
        if self._closed:
            return None
        self._taken.set()
        return self._items.popleft()

    async def drained(self) -> None:
        """Wait until the consumer has taken every item."""
        while self._items and not self._closed:
            self._taken.clear()
            await self._taken.wait()

    def close(self, error: BaseException | None = None) -> None:
        self._closed = True
        self._error = error
        self._items.clear()
        self._put.set()
        self._taken.set()
