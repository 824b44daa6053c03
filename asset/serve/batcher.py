"""A dynamic batcher (as in Triton): concurrent requests are grouped into batches for one worker.

One asyncio task owns a bounded queue. It takes the first waiting request, takes whatever else is
already queued, and waits up to `max_wait` for more (up to `max_batch` images) only while more
requests are on their way (announced with `expect()` by the handlers that are still decoding their
images): a lone request runs at once (no added latency at low load), while under load the batches
fill. The batch runs on the predictor in a single dedicated thread, so the backend is never called
from two threads at once and the event loop stays free. A full queue is refused at once
(QueueFull -> 503 + Retry-After), never piled up.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The bounded queue is full: the caller should retry later."""


@dataclass
class Job:
    images: list[np.ndarray]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, predict, max_batch: int, max_wait_ms: float, queue_size: int, observe_batch=None) -> None:
        """predict(list[np.ndarray]) -> list[Prediction]; observe_batch(n) is called with each batch size."""
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self.observe_batch = observe_batch or (lambda n: None)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")
        self.task: asyncio.Task | None = None
        self.arriving = 0  # images announced by handlers still decoding them (see expect)

    def expect(self, images: int) -> None:
        """Announce `images` about to be submitted (or, negative, no longer coming): the batcher waits for them."""
        self.arriving = max(0, self.arriving + images)

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(QueueFull("server is shutting down"))
        self.executor.shutdown(wait=True)

    async def submit(self, images: list[np.ndarray]) -> tuple[list, float]:
        """Queue images (one request); returns (predictions, seconds spent in the backend for its batch)."""
        job = Job(images, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(f"queue full ({self.queue.maxsize} requests waiting)") from None
        return await job.future

    async def run_blocking(self, fn, *args):
        """Run `fn` on the backend thread (warm-up, anything that touches the backend)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _collect(self) -> list[Job]:
        jobs = [await self.queue.get()]
        count = len(jobs[0].images)
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_batch:
            if self.queue.empty() and self.arriving <= 0:
                break  # nobody else is on the way: don't make this batch wait
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                job = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                break
            jobs.append(job)
            count += len(job.images)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            images = [img for j in jobs for img in j.images]
            self.observe_batch(len(images))
            start = time.perf_counter()
            try:
                predictions = await loop.run_in_executor(self.executor, self.predict, images)
            except Exception as exc:  # the backend failed: every request of the batch gets the error
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - start
            position = 0
            for j in jobs:
                part = predictions[position:position + len(j.images)]
                position += len(j.images)
                if not j.future.done():
                    j.future.set_result((part, elapsed))
