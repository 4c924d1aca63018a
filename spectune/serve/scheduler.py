"""Dynamic batching: every generation request joins one running batch of the engine.

One thread owns the model and the engine's Batch. Between target passes it admits waiting
requests (up to --max-batch rows), so a request never waits for a whole batch to finish
(continuous batching); rows leave the batch the step they end. Text goes back to each request's
asyncio queue on the server's event loop. The queue of waiting requests is bounded (--max-queue):
beyond it `submit` refuses at once, and the server answers 429 instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..decode.engine import Batch, Request
from ..decode.text import TextStream


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Job:
    """A request on its way through the engine; events arrive on `events` as (kind, value):
    ("text", piece), then ("done", None) or ("error", message)."""

    request: Request
    text: TextStream
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None

    def push(self, kind: str, value=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass


class Scheduler:
    def __init__(self, generator, *, max_batch: int, max_queue: int, metrics=None):
        self.gen, self.max_batch, self.max_queue, self.metrics = generator, max_batch, max_queue, metrics
        self.pending: deque[Job] = deque()
        self.jobs: dict[int, Job] = {}  # id(request) -> job, for the rows in the batch
        self.batch = self._new_batch()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="spectune-engine", daemon=True)
        self.thread.start()

    def _new_batch(self) -> Batch:
        return Batch(self.gen.model, drafter=self.gen.drafter, pad_id=self.gen.pad_id)

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                raise QueueFull("shutting down")
            if len(self.pending) >= self.max_queue:
                raise QueueFull(f"{len(self.pending)} requests already waiting")
            self.pending.append(job)
            self._gauges()
            self.cond.notify()

    def depth(self) -> int:
        return len(self.pending)

    def close(self, timeout: float) -> None:
        """Finish what was admitted and what waits (within `timeout` seconds), then stop."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout)

    def _gauges(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self.pending))
            self.metrics.batch_rows.set(len(self.batch))

    def _admit(self) -> list[Job]:
        with self.cond:
            while not self.pending and not self.batch and not self.stopping:
                self.cond.wait()
            room = []
            while self.pending and len(self.batch) + len(room) < self.max_batch:
                job = self.pending.popleft()
                if job.request.cancelled:  # the client left while it waited
                    job.push("done")
                    continue
                room.append(job)
            self._gauges()
            return room

    def _run(self) -> None:
        while True:
            room = self._admit()
            if not room and not self.batch:
                if self.stopping and not self.pending:
                    return
                continue
            for job in room:
                self.jobs[id(job.request)] = job
            try:
                events = self.batch.add([j.request for j in room]) if room else self.batch.step()
            except Exception as e:  # an engine failure ends the rows it hit, never the server
                for job in list(self.jobs.values()):
                    job.push("error", f"decoding failed: {type(e).__name__}: {e}")
                self.jobs.clear()
                self.batch = self._new_batch()
                continue
            now = time.perf_counter()
            for request, tokens in events:
                job = self.jobs.get(id(request))
                if job is None:  # ended (a stop string, a client that left) but still in the batch for this step
                    continue
                if job.first_token is None:
                    job.first_token = now
                piece = job.text.follow(request, tokens)
                if piece:
                    job.push("text", piece)
                if request.finish_reason is not None:
                    job.push("done")
                    del self.jobs[id(request)]
            for rid in [rid for rid, job in self.jobs.items() if job.request.cancelled]:
                job = self.jobs.pop(rid)  # a client that left: its row leaves at the next step
                job.push("done")
            self._gauges()
