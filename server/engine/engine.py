"""The generation engine: the only code that touches the pipelines.

Requests become jobs in a bounded queue (full -> 429). Each device (TRDQ_DEVICES; one
by default) has a worker: its own copy of the models, one thread, and one dispatcher
coroutine that takes the oldest job plus compatible waiting ones (same size, steps,
frames, guidance, precision) from the shared queue and runs them as one pipeline call
on that thread. So the event loop never blocks, a pipeline is never used concurrently,
and an idle device always takes the next batch.

Every accepted job ends in exactly one final state (its future is always resolved):
a result, a ServiceError, or cancelled. Cancellation (client gone, timeout, DELETE,
shutdown) drops a queued job at once and stops a running batch at the next denoising
step once every job in it is cancelled. `begin_drain` stops admissions for a graceful
shutdown; `idle` says when the accepted work is done.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from server.engine.jobs import Job, JobOutput, JobQueue, JobSpec, QueueFull, StageTimings
from server.engine.models import ModelSet, ServedModel, configure_kernels, load_models
from server.errors import (
    DeviceOutOfMemoryError,
    GenerationCancelledError,
    GenerationFailedError,
    GenerationTimeoutError,
    NotReadyError,
    QueueFullError,
    ServiceError,
    ShuttingDownError,
)
from server.metrics import Metrics
from server.settings import Settings
from trdq.pipeline import GenerationRequest, generate, resolve_device, size_multiple

logger = logging.getLogger(__name__)


@dataclass
class DeviceWorker:
    """One device: its own copy of the models and the one thread that runs them."""

    device: torch.device
    executor: ThreadPoolExecutor
    models: ModelSet | None = None
    dispatcher: asyncio.Task | None = None

    def on_device(self):
        """Make the worker's GPU current (Triton launches on the current device)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()

    def load(self, settings: Settings, metrics: Metrics) -> ModelSet:
        with self.on_device():
            return load_models(settings, metrics, self.device)

    def loaded_models(self) -> ModelSet:
        """The models, which exist once ``load`` returned (work is dispatched after)."""
        if self.models is None:
            raise RuntimeError(f"the models of {self.device} are not loaded")
        return self.models


class GenerationEngine:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ready = False
        self.workers = [
            DeviceWorker(
                resolve_device(name),
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"trdq-worker-{index}"),
            )
            for index, name in enumerate(settings.device_names)
        ]
        self._queue: JobQueue | None = None
        self.device = self.workers[0].device
        self.startup_seconds: float | None = None
        #: the kernel switches in force once started (/info)
        self.kernels: dict[str, Any] | None = None
        self.accepting = True  # False once a graceful shutdown began
        self._active: set[Job] = set()  # accepted and not final
        #: Test hook, called on the worker thread before each pipeline call with the
        #: batch's specs; raising there simulates a failure inside generation.
        self.fault_hook: Callable[[list[JobSpec]], None] | None = None

    @property
    def queue(self) -> JobQueue:
        """The job queue; it exists from ``start`` on (requests are refused before)."""
        if self._queue is None:
            raise RuntimeError("the engine has not started")
        return self._queue

    @property
    def models(self) -> ModelSet | None:
        """The first worker's models: what every worker serves (for validation and /info)."""
        return self.workers[0].models

    # -- life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        self._queue = JobQueue(self.settings.max_queue)
        self.kernels = configure_kernels(self.settings)
        # One device after the other: the first fills the calibration cache, the rest hit it.
        for worker in self.workers:
            worker.models = await loop.run_in_executor(
                worker.executor, worker.load, self.settings, self.metrics
            )
            if self.settings.warmup:
                await loop.run_in_executor(worker.executor, self._warm_up, worker)
            self._update_memory_metrics(worker.device)
        for index, worker in enumerate(self.workers):
            worker.dispatcher = asyncio.create_task(
                self._dispatch_forever(worker), name=f"trdq-dispatch-{index}"
            )
        self.startup_seconds = time.perf_counter() - started
        self.ready = True
        logger.info(
            "engine ready in %.1f s on %s", self.startup_seconds,
            ", ".join(str(worker.device) for worker in self.workers),
        )

    def begin_drain(self) -> None:
        """Stop admitting work (/readyz turns 503); accepted work carries on."""
        if self.accepting:
            logger.info("draining: %d accepted job(s) still to finish", len(self._active))
        self.accepting = False

    @property
    def idle(self) -> bool:
        return not self._active

    async def stop(self) -> None:
        self.ready = False
        self.accepting = False
        for worker in self.workers:
            if worker.dispatcher is not None:
                worker.dispatcher.cancel()
                try:
                    await worker.dispatcher
                except asyncio.CancelledError:
                    pass
        if self._queue is not None:
            for job in self._queue.drain():
                self._cancel_metric("shutdown")
                _resolve(job, error=ShuttingDownError("the server shut down before this job ran"))
        for job in list(self._active):  # a running batch stops at its next step
            job.cancel("shutdown")
        for worker in self.workers:
            worker.executor.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _warm_up(worker: DeviceWorker) -> None:
        """One short generation per variant, so the first request pays no lazy set-up."""
        for model in worker.loaded_models().all():
            request = GenerationRequest(
                prompts=["warm-up"], seeds=[0], width=model.default_width,
                height=model.default_height, num_inference_steps=2, guidance_scale=4.5,
                num_frames=(min(2, model.max_frames) if model.frame_step == 1 else 1)
                if model.task == "video" else None,
            )
            with worker.on_device():
                generate(model.pipe, request)

    # -- submission ---------------------------------------------------------------
    def served_model(self, task: str, quant: str | None) -> ServedModel:
        if not self.accepting:
            raise ShuttingDownError(
                "the server is shutting down; retry on another replica",
                headers={"Retry-After": "1"},
            )
        if not self.ready or self.models is None:
            raise NotReadyError("the server is still loading its models")
        return self.models.get(task, quant)

    @staticmethod
    def size_multiple(model: ServedModel) -> int:
        """Width and height must be multiples of this: VAE downscale x transformer patch."""
        return size_multiple(model.pipe)

    def queue_depth(self) -> int:
        return 0 if self._queue is None else len(self._queue)

    async def submit(self, spec: JobSpec) -> JobOutput:
        """Queue a job and wait for its result (raises a ServiceError on failure)."""
        return await self.wait(self.enqueue(spec), self.settings.request_timeout_s)

    def enqueue(self, spec: JobSpec) -> Job:
        """Accept a job into the queue (429 when full, 503 when not ready or draining)."""
        self.served_model(spec.task, spec.quant)  # fail fast: unknown precision, draining
        job = Job(spec=spec, future=asyncio.get_running_loop().create_future())
        try:
            self.queue.put(job)
        except QueueFull:
            retry_after = max(1, round(self.settings.request_timeout_s / 10))
            raise QueueFullError(
                f"the queue is full ({self.queue.max_size} waiting); retry later",
                headers={"Retry-After": str(retry_after)},
            ) from None
        # A failure nobody awaits any more (client gone) must not be logged as unretrieved.
        job.future.add_done_callback(_retrieve)
        self._active.add(job)
        self.metrics.inflight.inc()

        def finished(_future) -> None:
            self._active.discard(job)
            self.metrics.inflight.dec()

        job.future.add_done_callback(finished)
        self.metrics.queue_depth.set(len(self.queue))
        return job

    async def wait(self, job: Job, timeout_s: float) -> JobOutput:
        """Wait for a job; a timeout or a cancelled waiter cancels the job."""
        remaining = max(0.0, timeout_s - (time.perf_counter() - job.enqueued_at))
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=remaining)
        except asyncio.TimeoutError:
            self.cancel(job, "timeout")
            raise GenerationTimeoutError(
                f"generation did not finish within {timeout_s:g} s"
            ) from None
        except asyncio.CancelledError:  # the client went away: stop work on its behalf
            self.cancel(job, "client")
            raise

    def cancel(self, job: Job, reason: str) -> None:
        """Cancel a job: a queued one is dropped now, a running one stops at the next step."""
        if job.future.done() or job.cancelled.is_set():
            return
        job.cancel(reason)
        self._cancel_metric(reason)
        if self._queue is not None and self._queue.remove(job):
            self.metrics.queue_depth.set(len(self._queue))
            _resolve(job, error=_cancel_error(job))

    def _cancel_metric(self, reason: str) -> None:
        self.metrics.cancellations.labels(reason=reason).inc()

    # -- dispatch -----------------------------------------------------------------
    async def _dispatch_forever(self, worker: DeviceWorker) -> None:
        """One per worker: take the next batch whenever this worker is free."""
        while True:
            batch = await self.queue.take_batch(
                self.settings.max_batch, self.settings.batch_window_ms / 1000
            )
            self.metrics.queue_depth.set(len(self.queue))
            for job in batch:
                if job.cancelled.is_set():
                    _resolve(job, error=_cancel_error(job))
            batch = [job for job in batch if not job.cancelled.is_set()]
            if batch:
                await self._run_and_resolve(batch, worker)

    async def _run_and_resolve(self, batch: list[Job], worker: DeviceWorker) -> None:
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for job in batch:
            job.started_unix = time.time()
            self.metrics.queue_wait.observe(now - job.enqueued_at)
        self.metrics.batch_size.observe(len(batch))
        try:
            outputs = await loop.run_in_executor(
                worker.executor, self._run_batch, batch, now, worker
            )
        except DeviceOutOfMemoryError as error:
            if len(batch) > 1:  # memory is freed: try the jobs one by one before failing them
                logger.warning("out of memory on a batch of %d; retrying one by one", len(batch))
                for job in batch:
                    await self._run_and_resolve([job], worker)
                return
            self._fail(batch, error)
            return
        except GenerationCancelledError:
            for job in batch:
                _resolve(job, error=_cancel_error(job))
            return
        except ServiceError as error:
            self._fail(batch, error)
            return
        except Exception as error:  # a failed generation fails its requests, not the server
            logger.exception("generation failed")
            self._fail(batch, GenerationFailedError(
                f"generation failed ({type(error).__name__}); the server keeps serving"
            ))
            return
        for job, output in zip(batch, outputs):
            if job.cancelled.is_set():
                _resolve(job, error=_cancel_error(job))
            else:
                _resolve(job, result=output)

    @staticmethod
    def _fail(batch: list[Job], error: ServiceError) -> None:
        for job in batch:
            _resolve(job, error=error)

    def _run_batch(
        self, batch: list[Job], dequeued_at: float, worker: DeviceWorker
    ) -> list[JobOutput]:
        """Worker thread: one pipeline call for the whole batch."""
        first = batch[0].spec
        model = worker.loaded_models().get(first.task, first.quant)
        prompts, negatives, seeds = [], [], []
        for job in batch:
            count = len(job.spec.seeds)
            prompts += [job.spec.prompt] * count
            negatives += [job.spec.negative_prompt] * count
            seeds += list(job.spec.seeds)
        request = GenerationRequest(
            prompts=prompts, seeds=seeds, width=first.width, height=first.height,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale, negative_prompts=negatives,
            num_frames=first.num_frames,
        )

        def on_step(step_index: int, num_steps: int) -> None:
            for job in batch:
                job.steps_done = step_index + 1
            if all(job.cancelled.is_set() for job in batch):
                raise GenerationCancelledError("request cancelled")

        try:
            if self.fault_hook is not None:
                self.fault_hook([job.spec for job in batch])
            with worker.on_device(), model.profiler.call() as profile:
                pixels = generate(model.pipe, request, on_step=on_step)
        except torch.cuda.OutOfMemoryError:
            logger.warning("device out of memory on a batch of %d job(s)", len(batch))
            gc.collect()
            if worker.device.type == "cuda":
                with worker.on_device():
                    torch.cuda.empty_cache()
            raise DeviceOutOfMemoryError(
                "the device ran out of memory; retry later or with less work",
                headers={"Retry-After": "1"},
            ) from None
        finally:
            self._update_memory_metrics(worker.device)
        self._observe_generation(model, profile, pixels)
        return self._split(batch, model, pixels, profile, dequeued_at, str(worker.device))

    def _observe_generation(self, model: ServedModel, profile, pixels: np.ndarray) -> None:
        stage = self.metrics.stage_duration
        labels = {"model": model.name, "quant": model.quant}
        stage.labels(stage="text_encode", **labels).observe(profile.text_encode_s)
        stage.labels(stage="denoise", **labels).observe(profile.denoise_s)
        stage.labels(stage="vae_decode", **labels).observe(profile.decode_s)
        if model.task == "image":
            self.metrics.generated_images.inc(pixels.shape[0])
        else:
            self.metrics.generated_video_frames.inc(pixels.shape[0] * pixels.shape[1])

    @staticmethod
    def _split(batch, model, pixels, profile, dequeued_at, device: str) -> list[JobOutput]:
        outputs, start = [], 0
        for job in batch:
            count = len(job.spec.seeds)
            timings = StageTimings(
                queue_s=dequeued_at - job.enqueued_at, text_encode_s=profile.text_encode_s,
                denoise_s=profile.denoise_s, vae_decode_s=profile.decode_s,
            )
            outputs.append(JobOutput(
                pixels=pixels[start:start + count], seeds=job.spec.seeds, model=model.name,
                quant=model.quant, timings=timings, device=device,
            ))
            start += count
        return outputs

    # -- observability ------------------------------------------------------------
    def _update_memory_metrics(self, device: torch.device) -> None:
        gauge = self.metrics.device_memory
        if device.type == "cuda":
            name = str(device)
            gauge.labels(device=name, kind="allocated").set(torch.cuda.memory_allocated(device))
            gauge.labels(device=name, kind="reserved").set(torch.cuda.memory_reserved(device))
            gauge.labels(device=name, kind="peak").set(torch.cuda.max_memory_allocated(device))
            gauge.labels(device=name, kind="total").set(torch.cuda.mem_get_info(device)[1])
            return
        rss = _resident_bytes()
        gauge.labels(device="cpu", kind="allocated").set(rss)
        gauge.labels(device="cpu", kind="reserved").set(rss)
        gauge.labels(device="cpu", kind="peak").set(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        gauge.labels(device="cpu", kind="total").set(_memory_limit_bytes())


def _resolve(job: Job, result: JobOutput | None = None, error: Exception | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


def _cancel_error(job: Job) -> ServiceError:
    if job.cancel_reason == "timeout":
        return GenerationTimeoutError("generation did not finish within the time limit")
    return GenerationCancelledError(f"cancelled ({job.cancel_reason or 'by request'})")


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _memory_limit_bytes() -> int:
    """The cgroup memory limit when one is set, else the machine's physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as limit_file:
                text = limit_file.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), physical)
    return physical


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()
