"""The slots for calls to the apiserver: one client address cannot take them all, waits in its
own queue, and leaves no state behind once it has nothing in flight."""

import asyncio

import pytest

from kamus.server.kubeauth.fair_share import FairShare, NoSlot


class Holders:
    """Calls that take a slot and keep it until :meth:`release`; counts who holds one."""

    def __init__(self, slots: FairShare) -> None:
        self.slots = slots
        self.holding: dict[str | None, int] = {}
        self.peak_total = 0
        self._release = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def _hold(self, client: str | None) -> None:
        async with self.slots.slot(client):
            self.holding[client] = self.holding.get(client, 0) + 1
            self.peak_total = max(self.peak_total, sum(self.holding.values()))
            try:
                await self._release.wait()
            finally:
                self.holding[client] -= 1

    def start(self, client: str | None, count: int = 1) -> list[asyncio.Task[None]]:
        started = [asyncio.create_task(self._hold(client)) for _ in range(count)]
        self.tasks += started
        return started

    def release(self) -> None:
        self._release.set()

    async def finish(self) -> list[BaseException | None]:
        self.release()
        return await asyncio.gather(*self.tasks, return_exceptions=True)


async def settle() -> None:
    """Let every task that can run do so (acquire what is free, or start waiting)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_client_holds_at_most_its_share() -> None:
    holders = Holders(FairShare(total=4, per_client=2, wait_seconds=10))
    holders.start("10.0.0.1", 6)
    await settle()
    assert holders.holding == {"10.0.0.1": 2}
    await holders.finish()
    assert holders.holding == {"10.0.0.1": 0}


async def test_a_flooding_client_waits_behind_itself_not_in_front_of_others() -> None:
    holders = Holders(FairShare(total=3, per_client=2, wait_seconds=10))
    holders.start("attacker", 50)
    await settle()
    holders.start("victim")
    await settle()
    # At once: the attacker's 48 waiting calls are in its own queue, not the shared one.
    assert holders.holding == {"attacker": 2, "victim": 1}
    await holders.finish()


async def test_the_total_is_never_exceeded() -> None:
    holders = Holders(FairShare(total=3, per_client=2, wait_seconds=10))
    for client in ("a", "b", "c"):
        holders.start(client, 2)
    holders.start(None, 2)  # the service's own calls: one slot of their own, outside the total
    await settle()
    callers = {client: n for client, n in holders.holding.items() if client is not None}
    assert holders.holding[None] == 1
    assert sum(callers.values()) == 3
    results = await holders.finish()
    assert results == [None] * 8  # the waiting ones got their turn
    assert holders.peak_total == 3 + 1


async def test_the_services_own_calls_never_wait_for_the_callers() -> None:
    """A readiness check or isAlive must answer while a flood holds every shared slot."""
    slots = FairShare(total=2, per_client=1, wait_seconds=0.2)
    holders = Holders(slots)
    holders.start("a")
    holders.start("b")
    holders.start("c")  # waits for a shared slot
    await settle()
    async with slots.slot(None):
        pass
    await holders.finish()


async def test_state_is_kept_only_for_clients_with_calls_in_progress() -> None:
    slots = FairShare(total=4, per_client=2, wait_seconds=10)
    holders = Holders(slots)
    holders.start("a", 3)
    holders.start("b", 1)
    holders.start(None, 1)
    await settle()
    assert len(slots) == 2  # a (two holding, one waiting) and b; None keeps no entry
    await holders.finish()
    assert len(slots) == 0
    for n in range(1000):  # a thousand addresses, one call each, one after another
        async with slots.slot(f"10.0.{n // 256}.{n % 256}"):
            pass
    assert len(slots) == 0


async def test_a_wait_past_the_deadline_says_the_clients_own_share_was_taken() -> None:
    slots = FairShare(total=4, per_client=1, wait_seconds=0.2)
    holders = Holders(slots)
    holders.start("a")
    await settle()
    with pytest.raises(NoSlot) as info:
        async with slots.slot("a"):
            pytest.fail("a second slot for a client whose share is one")
    assert info.value.own_queue
    async with slots.slot("b"):  # the others are not held up
        pass
    await holders.finish()
    assert len(slots) == 0


async def test_a_wait_past_the_deadline_says_every_shared_slot_was_taken() -> None:
    slots = FairShare(total=2, per_client=1, wait_seconds=0.2)
    holders = Holders(slots)
    holders.start("a")
    holders.start("b")
    await settle()
    with pytest.raises(NoSlot) as info:
        async with slots.slot("c"):
            pytest.fail("a third slot of two")
    assert not info.value.own_queue
    await holders.finish()
    assert len(slots) == 0


async def test_a_call_given_up_while_waiting_gives_back_what_it_took() -> None:
    slots = FairShare(total=2, per_client=2, wait_seconds=0.3)
    holders = Holders(slots)
    holders.start("a")
    holders.start("b")
    await settle()
    waiting = holders.start("a")[0]  # takes a's second share, then waits for the shared slot
    await settle()
    waiting.cancel()
    await settle()
    assert waiting.cancelled()
    # a's second share was given back: the next call of a waits for the shared slot only.
    with pytest.raises(NoSlot) as info:
        async with slots.slot("a"):
            pytest.fail("a third shared slot of two")
    assert not info.value.own_queue
    await holders.finish()
    assert len(slots) == 0
    async with slots.slot("a"):  # and the shared slot is free again
        pass


def test_a_share_above_the_total_is_the_total() -> None:
    assert FairShare(total=3, per_client=10, wait_seconds=1).per_client == 3
