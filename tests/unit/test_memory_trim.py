"""boxd.memory: one trim after a burst of session ends, not one per session."""

import asyncio

from boxd import memory


def _trimmer(calls: list[float], quiet: float, max_delay: float) -> memory.Trimmer:
    return memory.Trimmer(quiet, max_delay,
                          action=lambda: calls.append(asyncio.get_running_loop().time()))


def test_a_burst_of_ends_trims_once_after_it():
    async def main() -> list[float]:
        calls: list[float] = []
        trimmer = _trimmer(calls, quiet=0.05, max_delay=10)
        for _ in range(20):
            trimmer.trim_soon()
            await asyncio.sleep(0.005)
        assert calls == []  # still in the burst
        await asyncio.sleep(0.3)
        return calls

    assert len(asyncio.run(main())) == 1


def test_ends_that_never_stop_still_trim_every_max_delay():
    async def main() -> list[float]:
        calls: list[float] = []
        trimmer = _trimmer(calls, quiet=0.2, max_delay=0.1)
        loop = asyncio.get_running_loop()
        until = loop.time() + 0.5
        while loop.time() < until:
            trimmer.trim_soon()
            await asyncio.sleep(0.01)
        trimmer.cancel()
        return calls

    assert len(asyncio.run(main())) >= 2


def test_a_failing_trim_is_logged_not_raised():
    def boom() -> None:
        raise OSError("no")

    async def main() -> None:
        trimmer = memory.Trimmer(0.01, 1, action=boom)
        trimmer.trim_soon()
        await asyncio.sleep(0.1)

    asyncio.run(main())


def test_outside_an_event_loop_trim_soon_does_nothing():
    memory.trim_soon()


def test_trim_and_configure_run_here():
    memory.configure()
    memory.trim()
    assert memory.rss_kib() > 0
