"""A dynamic batcher (as in Triton): concurrent requests are grouped into batches for one worker thread.

The worker thread owns the backend: it takes the first waiting request, takes whatever else is already
queued, and waits up to `max_wait` for more (up to `max_batch` images) only while more requests are on
their way (announced with `expect()` by the handlers still decoding their images). A lone request runs at
once (no added latency at low load); under load the batches fill, and the worker goes from one batch
straight to the next without a round trip through the event loop. The backend is never called from two
threads at once and the event loop stays free. When a batch of several requests fails, each request is run
again alone, so only the one whose images fail gets the error. A full queue is refused at once (QueueFull -> 503 +
Retry-After), never piled up.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    """The bounded queue is full: the caller should retry later."""


@dataclass
class Job:
    images: list[np.ndarray]
    future: asyncio.Future


@dataclass
class Call:
    """Something else to run on the backend thread (warm-up): fn(*args), its outcome sent to `future`."""
    fn: object
    args: tuple
    future: asyncio.Future


STOP = object()


class DynamicBatcher:
    def __init__(self, predict, max_batch: int, max_wait_ms: float, queue_size: int, observe_batch=None) -> None:
        """predict(list[np.ndarray]) -> list[Prediction]; observe_batch(n) is called with each batch size."""
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.observe_batch = observe_batch or (lambda n: None)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # Job, Call or STOP, from the event loop
        self.arriving = 0  # images announced by handlers still decoding them (written by the event loop only)
        self.submitted = 0  # requests queued (written by the event loop only)
        self.taken = 0  # requests the worker took into a batch (written by the worker only)
        self.stopping = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def expect(self, images: int) -> None:
        """Announce `images` about to be submitted (or, negative, no longer coming): the batcher waits for them."""
        self.arriving = max(0, self.arriving + images)

    @property
    def depth(self) -> int:
        """Requests waiting for the worker."""
        return max(0, self.submitted - self.taken)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._work, name="backend", daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        """Finish the batch in flight, refuse what still waits, and end the worker thread."""
        if self.thread is None:
            return
        self.stopping.set()  # checked between batches: what waits is refused, not run
        self.inbox.put(STOP)  # wakes a worker waiting for work
        await asyncio.to_thread(self.thread.join)
        self.thread = None

    async def submit(self, images: list[np.ndarray], announced: bool = False) -> tuple[list, float]:
        """Queue images (one request); returns (predictions, seconds spent in the backend for its batch).
        announced=True withdraws the `expect(len(images))` made for them, once they are queued."""
        if self.depth >= self.queue_size:
            if announced:
                self.expect(-len(images))
            raise QueueFull(f"queue full ({self.queue_size} requests waiting)")
        job = Job(images, asyncio.get_running_loop().create_future())
        self.submitted += 1
        self.inbox.put(job)
        if announced:  # after the put: the worker never sees "nothing queued, nothing coming" while it is on its way
            self.expect(-len(images))
        return await job.future

    async def run_blocking(self, fn, *args):
        """Run `fn` on the backend thread (warm-up, anything that touches the backend)."""
        call = Call(fn, args, asyncio.get_running_loop().create_future())
        self.inbox.put(call)
        return await call.future

    # ------------------------------------------------------------------ the worker thread
    def _deliver(self, outcomes: list[tuple[asyncio.Future, object, BaseException | None]]) -> None:
        """Settle (future, value, error) triples on the event loop: one wake-up of the loop per batch."""
        def settle() -> None:
            for future, value, error in outcomes:
                if future.done():  # the client went away: its handler was cancelled
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)

        self.loop.call_soon_threadsafe(settle)

    def _receive(self, item, backlog: deque, calls: list) -> None:
        if item is not STOP:
            (calls if isinstance(item, Call) else backlog).append(item)
        if item is STOP or self.stopping.is_set():
            raise _Stopping

    def _collect(self, backlog: deque, calls: list) -> list[Job]:
        """Block for the first job, then gather company as the module docstring says."""
        if self.stopping.is_set():
            raise _Stopping
        while not backlog and not calls:
            self._receive(self.inbox.get(), backlog, calls)
        if not backlog:
            return []
        deadline = time.perf_counter() + self.max_wait
        while sum(len(j.images) for j in backlog) < self.max_batch:
            try:
                self._receive(self.inbox.get_nowait(), backlog, calls)
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.perf_counter()
            if self.arriving <= 0 or remaining <= 0:
                break  # nobody else is on the way (or the wait is over): don't make this batch wait
            try:
                self._receive(self.inbox.get(timeout=remaining), backlog, calls)
            except queue.Empty:
                break
        jobs = [backlog.popleft()]  # a request larger than max_batch still runs, alone
        count = len(jobs[0].images)
        while backlog and count + len(backlog[0].images) <= self.max_batch:
            count += len(backlog[0].images)
            jobs.append(backlog.popleft())
        self.taken += len(jobs)
        return [j for j in jobs if not j.future.cancelled()]

    def _run_calls(self, calls: list) -> None:
        while calls:
            call = calls.pop(0)
            try:
                self._deliver([(call.future, call.fn(*call.args), None)])
            except Exception as exc:
                self._deliver([(call.future, None, exc)])

    def _run_alone(self, job: Job) -> tuple[asyncio.Future, object, BaseException | None]:
        start = time.perf_counter()
        try:
            return job.future, (self.predict(job.images), time.perf_counter() - start), None
        except Exception as exc:
            return job.future, None, exc

    def _work(self) -> None:
        backlog: deque[Job] = deque()
        calls: list[Call] = []
        try:
            while True:
                jobs = self._collect(backlog, calls)
                self._run_calls(calls)
                if not jobs:
                    continue
                images = [img for j in jobs for img in j.images]
                self.observe_batch(len(images))
                start = time.perf_counter()
                try:
                    predictions = self.predict(images)
                except Exception as exc:
                    if len(jobs) == 1:
                        self._deliver([(jobs[0].future, None, exc)])
                    else:  # one request's images may be what failed: run each alone, so only that one fails
                        self._deliver([self._run_alone(j) for j in jobs])
                    continue
                elapsed = time.perf_counter() - start
                outcomes, position = [], 0
                for j in jobs:
                    outcomes.append((j.future, (predictions[position:position + len(j.images)], elapsed), None))
                    position += len(j.images)
                self._deliver(outcomes)
        except _Stopping:
            pass
        while True:  # refuse what still waits
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            if item is not STOP:
                (calls if isinstance(item, Call) else backlog).append(item)
        self._deliver([(item.future, None, QueueFull("server is shutting down")) for item in [*backlog, *calls]])


class _Stopping(Exception):
    """The STOP marker reached the worker."""
