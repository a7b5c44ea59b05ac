"""Work on a few threads, results as they finish, a bounded number in flight.

Used by ``eval`` (photos of a benchmark) and the Python API's ``locate_many`` (a folder of photos):
with remote models a photo is mostly waiting, so a few threads multiply throughput, while at most
``2 x workers`` photos are ever submitted, so a 100,000-photo batch holds a handful of futures and
an interruption waits only for the photos already running, never for the rest of the list.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(work: Callable[[T], R], items: Iterable[T], workers: int, *, name: str = "geoguide",
                salvage: Callable[[R], None] | None = None) -> Iterator[R]:
    """``work(item)`` for each item on ``workers`` threads, yielded in the order they finish.

    An exception from ``work`` propagates from the iteration. When the iteration is abandoned (an
    exception, Ctrl-C, the caller stopping early), pending items are cancelled, running ones are
    waited for, and ``salvage`` receives each result that completed meanwhile, so nothing done is
    lost (the eval runner writes those records)."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name) as pool:
        running: set[Future[R]] = {pool.submit(work, x) for x in itertools.islice(it, 2 * max(1, workers))}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    yield f.result()
                running |= {pool.submit(work, x) for x in itertools.islice(it, len(finished))}
        except BaseException:
            for f in running:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            if salvage is not None:
                for f in running:
                    if f.done() and not f.cancelled() and f.exception() is None:
                        with contextlib.suppress(BaseException):
                            salvage(f.result())
            raise
