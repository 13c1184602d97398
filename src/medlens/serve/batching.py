"""Dynamic batching: concurrent requests to one model gathered into one ``predict`` call.

Requests wait in a bounded queue. One worker per model takes the first waiting request and
every other one waiting, up to ``max_batch`` images; while more requests for the model are
still arriving (announced with :meth:`Batcher.expect`: being received or read), it waits up to
``max_wait_ms`` for them. A lone request therefore never waits, and under load batches form by
themselves while the previous one runs. The predictor runs in the batcher's own thread, so the
event loop keeps accepting and answering requests while the network runs. A full queue
refuses at once (:class:`QueueFull`: the server answers 503 with ``Retry-After``), and a batch
in which one image fails is retried image by image, so one bad input fails only its own
request. ``max_batch=1`` turns batching off (one image per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batcher", "QueueFull"]


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` requests already."""


@dataclass
class _Item:
    image: Any
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gathers images for ``predict(list_of_images) -> list_of_results``.

    ``observe(batch_size, queue_wait_s, compute_s)`` is called after every batch (metrics).
    """

    def __init__(
        self,
        predict: Callable[[list], list],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        observe: Callable[[int, list[float], float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.predict = predict
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.observe = observe
        self.incoming = 0  # requests announced by expect() and not yet submitted
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medlens-predict")

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return 0 if self._queue is None else self._queue.qsize()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._pool.shutdown(wait=True)

    @contextlib.contextmanager
    def expect(self):
        """Around receiving and reading a request: the worker may wait for it."""
        self.incoming += 1
        try:
            yield
        finally:
            self.incoming -= 1

    async def submit(self, image: Any) -> tuple[Any, dict[str, Any]]:
        """The result for ``image`` and ``{"queue_s", "compute_s", "batch"}`` (the seconds it
        waited, its batch's predict call, that batch's size); raises what predicting it raised,
        or :class:`QueueFull`."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests waiting")
        item = _Item(image, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        return await item.future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self.incoming == 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in batch if not item.future.done()]  # timed out meanwhile
            if not batch:
                continue
            started = time.perf_counter()
            waits = [started - item.queued for item in batch]
            results = await loop.run_in_executor(self._pool, self._predict, batch)
            compute = time.perf_counter() - started
            if self.observe is not None:
                self.observe(len(batch), waits, compute)
            for item, wait, (ok, value) in zip(batch, waits, results, strict=True):
                if item.future.done():
                    continue
                if ok:
                    info = {"queue_s": wait, "compute_s": compute, "batch": len(batch)}
                    item.future.set_result((value, info))
                else:
                    item.future.set_exception(value)

    def _predict(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        images = [item.image for item in batch]
        try:
            return [(True, r) for r in self.predict(images)]
        except Exception as exc:
            if len(images) == 1:
                return [(False, exc)]
        out = []
        for image in images:  # one image failed the batch: each alone
            try:
                out.append((True, self.predict([image])[0]))
            except Exception as exc:
                out.append((False, exc))
        return out
