"""`async def` reward functions (an LLM judge, a remote verifier): run concurrently, as TRL 1.16 runs them.

TRL keeps one event loop on a daemon thread for the whole run and awaits a round's async rewards together with
`asyncio.gather`, after the synchronous ones. reasonrl does the same (one loop per process, made on first use, so
a client a reward opened on it in one round still works in the next), and contains them as scoring.py contains
the synchronous ones: a call that raises fails alone, and with `reward_timeout` each call is cancelled at its
deadline (a coroutine can be stopped, unlike a thread). A coroutine that blocks the loop itself (time.sleep inside
`async def`) cannot be cancelled: when the round's calls are not all done `ASYNC_GRACE` seconds after the deadline,
the unfinished ones count as timed out and the blocked loop is left to its daemon thread; the next round makes a
new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading

ASYNC_GRACE = 1.0
"""Seconds past reward_timeout after which a round's async calls that are still running count as timed out even
if their loop never got to cancel them."""


def is_async_callable(fn) -> bool:
    """Calling `fn` returns a coroutine: an `async def` function, a functools.partial of one, or an object whose
    `__call__` is `async def` (TRL's is_async_callable covers the same three)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    call = type(fn).__call__ if callable(fn) and not inspect.isfunction(fn) else None  # a callable object's method
    return inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call))


class _LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="reasonrl-async-rewards", daemon=True)
        self.thread.start()
        ready.wait()


_loop_thread: _LoopThread | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop_thread
    if _loop_thread is None:
        _loop_thread = _LoopThread()
    return _loop_thread.loop


def _abandon_event_loop() -> None:
    """The loop is blocked by a coroutine: stop it when it gets free, and make a new one for the next round."""
    global _loop_thread
    if _loop_thread is not None:
        _loop_thread.loop.call_soon_threadsafe(_loop_thread.loop.stop)
        _loop_thread = None


def call_async_rewards(calls: list[tuple], timeout: float | None) -> list:
    """Await `fn(**arguments)` for each (fn, name, arguments) in `calls` concurrently; one result per call: what it
    returned, or a scoring.RewardCallFailed when it raised or ran past `timeout` seconds."""
    from reasonrl.scoring import RewardCallFailed, _describe

    results: list = [None] * len(calls)
    finished = [False] * len(calls)

    async def one(index: int, fn, name: str, arguments: dict) -> None:
        try:
            task = asyncio.ensure_future(fn(**arguments))
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                results[index] = RewardCallFailed(name, f"timed out after {timeout:g} s (reward_timeout)")
            else:
                results[index] = task.result()
        except (Exception, SystemExit, asyncio.CancelledError) as error:  # noqa: BLE001 - a failing reward, contained
            results[index] = RewardCallFailed(name, _describe(error), error)
        finished[index] = True

    async def every_call() -> None:
        await asyncio.gather(*(one(index, *call) for index, call in enumerate(calls)))

    future = asyncio.run_coroutine_threadsafe(every_call(), _event_loop())
    try:
        future.result(timeout=None if timeout is None else timeout + ASYNC_GRACE)
    except concurrent.futures.TimeoutError:
        _abandon_event_loop()
        # a snapshot: a blocked call that ends later writes into `results`, which nobody reads any more
        return [results[index] if finished[index] else RewardCallFailed(
            name, f"timed out after {timeout:g} s (reward_timeout); it blocked the event loop, so it could not be "
                  f"cancelled: await in an async reward instead of blocking (e.g. asyncio.sleep, not time.sleep)")
            for index, (_, name, _) in enumerate(calls)]
    return list(results)
