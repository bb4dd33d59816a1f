"""List, then watch, one kind of object, for as long as the controller leads.

A watch resumes from its last resourceVersion, relists on 410 Gone, backs off on apiserver
errors and never gives up: Kamus's controller crash-looped on a closed stream. Apart from the
controller because none of this depends on what the objects mean; the caller's ``on_list`` and
``on_event`` decide that.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import aiohttp
from aiohttp import ClientResponse
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.watch import Watch

from controller.objects import ObjectList, narrow, read_json
from controller.pacing import Backoff, TokenBucket

log = logging.getLogger(__name__)
T = TypeVar("T")


class Informer(Generic[T]):
    """``on_list`` gets every object after each (re)list, ``on_event`` each watch event's type
    (ADDED, MODIFIED, DELETED) and object."""

    def __init__(
        self,
        what: str,
        shape: type[T],
        *,
        list_raw: Callable[[], Awaitable[ClientResponse]],
        watch_call: Callable[..., Awaitable[object]],
        watch_args: tuple[str, ...] = (),
        label_selector: str | None = None,
        on_list: Callable[[list[T]], None],
        on_event: Callable[[str, T], None],
        pace: TokenBucket,
        watch_timeout_seconds: int,
    ) -> None:
        self._what = what
        self._shape = shape
        self._list_raw = list_raw
        self._watch_call = watch_call
        self._watch_args = watch_args
        self._selector = {"label_selector": label_selector} if label_selector else {}
        self._on_list = on_list
        self._on_event = on_event
        self._pace = pace
        self._watch_timeout_seconds = watch_timeout_seconds

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion; resume, relist or back off."""
        backoff = Backoff()
        while True:
            try:
                version = await self._list()
                while True:  # each pass is one watch request; a closed stream just resumes
                    watch = Watch()
                    stream = watch.stream(
                        self._watch_call,
                        *self._watch_args,
                        resource_version=version,
                        timeout_seconds=self._watch_timeout_seconds,
                        **self._selector,
                    )
                    async for event in stream:
                        backoff.reset()
                        self._on_event(event["type"], narrow(event["raw_object"], self._shape))
                    version = watch.resource_version or version
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch expired (410 Gone); listing again", self._what)
                    continue
                log.warning("%s watch failed: %s %s; retrying", self._what, exc.status, exc.reason)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
                log.warning("%s watch failed (%s); retrying", self._what, type(exc).__name__)
            await backoff.wait()

    async def _list(self) -> str:
        """Hand every object to ``on_list``; the resourceVersion to watch from."""
        await self._pace.take()  # a relist of every object is what the rate limit is for
        listing = await read_json(await self._list_raw(), ObjectList)
        self._on_list([narrow(item, self._shape) for item in listing.get("items") or []])
        return listing["metadata"]["resourceVersion"]
