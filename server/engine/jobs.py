"""Generation jobs and the bounded queue the engine's dispatcher drains in batches."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

#: Job life cycle. `queued` -> `running` -> one of the final states.
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class JobSpec:
    """A validated generation request, independent of HTTP."""

    task: Literal["image", "video"]
    quant: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seeds: tuple[int, ...]  # one per output
    num_frames: int | None = None

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call."""
        return (
            self.task, self.quant, self.width, self.height, self.num_inference_steps,
            self.guidance_scale, self.num_frames,
        )


@dataclass
class StageTimings:
    queue_s: float = 0.0
    text_encode_s: float = 0.0
    denoise_s: float = 0.0
    vae_decode_s: float = 0.0


@dataclass
class JobOutput:
    pixels: np.ndarray  # [N, H, W, 3] or [N, F, H, W, 3] uint8
    seeds: tuple[int, ...]
    model: str
    quant: str
    timings: StageTimings
    device: str = ""  # the worker's device, e.g. "cuda:1"


@dataclass(eq=False)  # identity: jobs live in sets and are removed from the queue
class Job:
    spec: JobSpec
    future: asyncio.Future
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    enqueued_at: float = field(default_factory=time.perf_counter)
    created_unix: float = field(default_factory=time.time)
    # Set from any thread; the worker checks it at every denoising step.
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = ""
    # Progress (step i of N) written by the worker thread, read by the loop.
    steps_done: int = 0
    started_unix: float | None = None

    @property
    def state(self) -> JobState:
        if self.future.done():
            if self.future.cancelled():
                return "cancelled"
            error = self.future.exception()
            if error is None:
                return "succeeded"
            return "cancelled" if getattr(error, "error_type", "") == "cancelled" else "failed"
        if self.cancelled.is_set():
            return "cancelled"
        return "running" if self.started_unix is not None else "queued"

    def cancel(self, reason: str) -> None:
        """Ask the worker to stop (queued: skipped; running: stops at the next step)."""
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()


class QueueFull(Exception):
    pass


class JobQueue:
    """A bounded FIFO of jobs; `take_batch` returns the oldest job plus compatible ones."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._jobs: deque[Job] = deque()
        self._not_empty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        if len(self._jobs) >= self.max_size:
            raise QueueFull
        self._jobs.append(job)
        self._not_empty.set()

    def remove(self, job: Job) -> bool:
        """Drop a waiting job (a cancelled one frees its slot at once)."""
        try:
            self._jobs.remove(job)
        except ValueError:
            return False
        return True

    def requeue(self, jobs: list[Job]) -> None:
        """Put taken jobs back at the front, in order (their worker went away before
        running them); they were admitted, so the size bound does not apply."""
        self._jobs.extendleft(reversed(jobs))
        if self._jobs:
            self._not_empty.set()

    def drain(self) -> list[Job]:
        jobs = list(self._jobs)
        self._jobs.clear()
        self._not_empty.clear()
        return jobs

    async def take_batch(self, max_batch: int, window_s: float) -> list[Job]:
        while not self._jobs:
            self._not_empty.clear()
            await self._not_empty.wait()
        if max_batch > 1 and window_s > 0 and len(self._jobs) < max_batch:
            await asyncio.sleep(window_s)  # let concurrent requests arrive and join
            if not self._jobs:  # all were cancelled meanwhile
                return []
        first = self._jobs.popleft()
        batch = [first]
        key = first.spec.batch_key()
        outputs = len(first.spec.seeds)
        for job in list(self._jobs):
            if len(batch) >= max_batch:
                break
            if job.spec.batch_key() == key and outputs + len(job.spec.seeds) <= max_batch * 4:
                self._jobs.remove(job)
                batch.append(job)
                outputs += len(job.spec.seeds)
        if not self._jobs:
            self._not_empty.clear()
        return batch
