"""The generation engine: the queue, batching and cancellation in front of the devices.

Requests become jobs in a bounded queue (full -> 429). Each device (TRDQ_DEVICES; one
by default) has a worker with its own copy of the models (workers.py: a thread of this
process, or its own process under TRDQ_WORKER_MODE=process) and one dispatcher
coroutine that takes the oldest job plus compatible waiting ones (same size, steps,
frames, guidance, precision) from the shared queue and runs them as one pipeline call
on that worker. So the event loop never blocks, a pipeline is never used concurrently,
and an idle device always takes the next batch.

Every accepted job ends in exactly one final state (its future is always resolved):
a result, a ServiceError, or cancelled. Cancellation (client gone, timeout, DELETE,
shutdown) drops a queued job at once and stops a running batch at the next denoising
step once every job in it is cancelled. `begin_drain` stops admissions for a graceful
shutdown; `idle` says when the accepted work is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from server.engine.execute import BatchResult, FaultHook
from server.engine.jobs import Job, JobOutput, JobQueue, JobSpec, QueueFull, StageTimings
from server.engine.models import ModelCard, ModelSet, configure_kernels
from server.engine.workers import (
    DeviceWorker,
    ProcessWorker,
    ThreadWorker,
    cpu_threads_per_worker,
)
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

logger = logging.getLogger(__name__)


class GenerationEngine:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ready = False
        self.worker_mode = settings.resolved_worker_mode
        names = settings.device_names
        self.workers: list[DeviceWorker] = (
            [ProcessWorker(index, name, settings, metrics, cpu_threads_per_worker(names))
             for index, name in enumerate(names)]
            if self.worker_mode == "process"
            else [ThreadWorker(index, name, settings, metrics) for index, name in enumerate(names)]
        )
        self._queue: JobQueue | None = None
        self._cards: ModelSet[ModelCard] | None = None
        self.device = self.workers[0].device
        self.startup_seconds: float | None = None
        #: the kernel switches in force once started (/info)
        self.kernels: dict[str, Any] | None = None
        self.accepting = True  # False once a graceful shutdown began
        self._active: set[Job] = set()  # accepted and not final
        #: Test hook, called on the worker before each pipeline call with the batch's
        #: specs; raising there simulates a failure inside generation. A process worker
        #: gets it pickled with each batch (a module-level function or a partial of one).
        self.fault_hook: FaultHook | None = None

    @property
    def queue(self) -> JobQueue:
        """The job queue; it exists from ``start`` on (requests are refused before)."""
        if self._queue is None:
            raise RuntimeError("the engine has not started")
        return self._queue

    @property
    def models(self) -> ModelSet[Any] | None:
        """What every worker serves (for validation and /info): a thread worker's models
        themselves, or the cards of what a worker process loaded."""
        first = self.workers[0]
        return first.models if isinstance(first, ThreadWorker) else self._cards

    @property
    def serving(self) -> bool:
        """Started, and at least one worker is up (the others may be restarting)."""
        return self.ready and any(worker.serving for worker in self.workers)

    # -- life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        self._queue = JobQueue(self.settings.max_queue)
        try:
            if self.worker_mode == "process":
                # Each process applies the switches itself; they start together (the
                # calibration cache's file lock makes them calibrate once).
                started_all = await asyncio.gather(
                    *(worker.start() for worker in self.workers), return_exceptions=True)
                cards = []
                for outcome in started_all:
                    if isinstance(outcome, BaseException):
                        raise outcome
                    cards.append(outcome)
                self._cards = cards[0]
                self.kernels = self.workers[0].kernels
            else:
                self.kernels = configure_kernels(self.settings)
                # One after the other: the first fills the calibration cache, the rest hit it.
                for worker in self.workers:
                    await worker.start()
        except BaseException:
            await self._stop_workers()
            raise
        for index, worker in enumerate(self.workers):
            worker.dispatcher = asyncio.create_task(
                self._dispatch_forever(worker), name=f"trdq-dispatch-{index}"
            )
        self.startup_seconds = time.perf_counter() - started
        self.ready = True
        logger.info(
            "engine ready in %.1f s on %s (%s workers)", self.startup_seconds,
            ", ".join(str(worker.device) for worker in self.workers), self.worker_mode,
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
        await self._stop_workers()
        for job in list(self._active):  # whatever a stopped worker left unfinished
            _resolve(job, error=ShuttingDownError("the server shut down before this job finished"))

    async def _stop_workers(self) -> None:
        for worker in self.workers:
            await worker.stop()

    # -- submission ---------------------------------------------------------------
    def served_model(self, task: str, quant: str | None) -> ModelCard:
        if not self.accepting:
            raise ShuttingDownError(
                "the server is shutting down; retry on another replica",
                headers={"Retry-After": "1"},
            )
        if not self.ready or self.models is None:
            raise NotReadyError("the server is still loading its models")
        return self.models.get(task, quant)

    @staticmethod
    def size_multiple(model: ModelCard) -> int:
        """Width and height must be multiples of this: VAE downscale x transformer patch."""
        return model.size_multiple

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
        """One per worker: take the next batch whenever this worker is free (and up: a
        restarting worker process takes nothing, the others carry the queue)."""
        while True:
            await worker.until_ready()
            batch = await self.queue.take_batch(
                self.settings.max_batch, self.settings.batch_window_ms / 1000
            )
            for job in batch:
                if job.cancelled.is_set():
                    _resolve(job, error=_cancel_error(job))
            batch = [job for job in batch if not job.cancelled.is_set()]
            if batch and not worker.serving:  # it died while this waited for work
                self.queue.requeue(batch)
                batch = []
            self.metrics.queue_depth.set(len(self.queue))
            if batch:
                await self._run_and_resolve(batch, worker)

    async def _run_and_resolve(self, batch: list[Job], worker: DeviceWorker) -> None:
        now = time.perf_counter()
        for job in batch:
            job.started_unix = time.time()
            self.metrics.queue_wait.observe(now - job.enqueued_at)
        self.metrics.batch_size.observe(len(batch))
        try:
            result = await worker.run(batch, self.fault_hook)
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
        for job, output in zip(batch, self._split(batch, result, now)):
            if job.cancelled.is_set():
                _resolve(job, error=_cancel_error(job))
            else:
                _resolve(job, result=output)

    @staticmethod
    def _fail(batch: list[Job], error: ServiceError) -> None:
        for job in batch:
            _resolve(job, error=error)

    @staticmethod
    def _split(batch: list[Job], result: BatchResult, dequeued_at: float) -> list[JobOutput]:
        outputs = []
        for job, pixels in zip(batch, result.pixels):
            timings = StageTimings(
                queue_s=dequeued_at - job.enqueued_at, text_encode_s=result.text_encode_s,
                denoise_s=result.denoise_s, vae_decode_s=result.vae_decode_s,
            )
            outputs.append(JobOutput(
                pixels=pixels, seeds=job.spec.seeds, model=result.model, quant=result.quant,
                timings=timings, device=result.device,
            ))
        return outputs


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
