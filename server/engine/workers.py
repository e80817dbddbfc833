"""Device workers: where a batch runs. One per device (TRDQ_DEVICES), two kinds
(TRDQ_WORKER_MODE):

- ``ThreadWorker``: the models live in the server process and run on one thread of it.
  Cheap to start; several of them share the interpreter lock and CUDA's process-wide
  capture state.
- ``ProcessWorker``: a spawned process with its own interpreter, models, CUDA context and
  graphs (worker_main.py), fed over a pipe. The server process keeps the queue, batching,
  jobs and metrics; the worker sends back each job's pixels (uint8, a few MB a 1024 image)
  with its metric events, and the server process encodes the media off its event loop as
  in thread mode. A worker that dies fails only the batch it was running (500
  ``worker_crashed``) and is started again; until then the other workers take the queue.

Both expose: ``device``, ``name``, ``state`` (starting | ready | restarting | stopped),
``serving``, ``start()``, ``until_ready()``, ``run(batch, fault_hook)`` and ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Protocol

import torch

from server import errors
from server.engine.execute import BatchResult, FaultHook, on_device, record_memory, run_batch
from server.engine.execute import warm_up as warm_up_models
from server.engine.jobs import Job
from server.engine.models import ModelCard, ModelSet, ServedModel, load_models
from server.engine.remote_metrics import replay
from server.errors import GenerationCancelledError, GenerationFailedError, WorkerCrashedError
from server.metrics import Metrics
from server.settings import Settings
from trdq.pipeline import resolve_device

logger = logging.getLogger(__name__)

#: how often a waiting server checks whether every job of a running batch was cancelled
CANCEL_POLL_S = 0.05
#: how long a stopping worker process may take to finish before it is terminated
STOP_TIMEOUT_S = 10.0


class DeviceWorker(Protocol):
    """What the engine needs of a worker, whichever kind."""

    index: int
    device: torch.device
    name: str
    state: str
    restarts: int
    dispatcher: asyncio.Task | None
    #: the kernel switches in force in the worker (a process applies its own), once started
    kernels: dict[str, Any] | None

    @property
    def pid(self) -> int | None: ...

    @property
    def serving(self) -> bool: ...

    async def start(self) -> ModelSet[ModelCard]: ...

    async def until_ready(self) -> None: ...

    async def run(self, batch: list[Job], fault_hook: FaultHook | None) -> BatchResult: ...

    async def stop(self) -> None: ...


class ThreadWorker:
    """One device served by one thread of the server process."""

    mode = "thread"

    def __init__(self, index: int, device_name: str, settings: Settings,
                 metrics: Metrics) -> None:
        self.index = index
        self.device = resolve_device(device_name)
        self.name = str(self.device)
        self.settings, self.metrics = settings, metrics
        self.executor = ThreadPoolExecutor(max_workers=1,
                                           thread_name_prefix=f"trdq-worker-{index}")
        self.models: ModelSet[ServedModel] | None = None
        self.state = "starting"
        self.restarts = 0
        self.kernels: dict[str, Any] | None = None  # the engine applies them in this process
        self.dispatcher: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return os.getpid()  # the server process itself

    @property
    def serving(self) -> bool:
        return self.state == "ready"

    def loaded_models(self) -> ModelSet[ServedModel]:
        """The models, which exist once ``start`` returned (work is dispatched after)."""
        if self.models is None:
            raise RuntimeError(f"the models of {self.device} are not loaded")
        return self.models

    async def start(self) -> ModelSet[ModelCard]:
        loop = asyncio.get_running_loop()
        self.models = await loop.run_in_executor(self.executor, self._load)
        self.state = "ready"
        return self.models.cards()

    def _load(self) -> ModelSet[ServedModel]:
        with on_device(self.device):
            models = load_models(self.settings, self.metrics, self.device)
        if self.settings.warmup:
            warm_up_models(models, self.device, self.settings.warmup_batch_size_list,
                           self.settings.warmup_width_height, self.settings.warmup_steps)
        record_memory(self.metrics, self.device)
        return models

    async def until_ready(self) -> None:
        return None

    async def run(self, batch: list[Job], fault_hook: FaultHook | None) -> BatchResult:
        def on_step(steps_done: int) -> None:
            for job in batch:
                job.steps_done = steps_done
            if all(job.cancelled.is_set() for job in batch):
                raise GenerationCancelledError("request cancelled")

        return await asyncio.get_running_loop().run_in_executor(
            self.executor, run_batch, self.loaded_models(), self.device,
            [job.spec for job in batch], on_step, self.metrics, fault_hook,
        )

    async def stop(self) -> None:
        self.state = "stopped"
        self.executor.shutdown(wait=True, cancel_futures=True)


class ProcessWorker:
    """One device served by its own spawned process (see worker_main.py)."""

    mode = "process"

    def __init__(self, index: int, device_name: str, settings: Settings, metrics: Metrics,
                 cpu_threads: int = 1) -> None:
        self.index = index
        self.device_name = device_name
        self.device = resolve_device(device_name)  # a missing GPU is refused here, at once
        self.name = str(self.device)
        self.settings, self.metrics = settings, metrics
        self.cpu_threads = cpu_threads
        self.state = "starting"
        self.restarts = 0
        # the device's series exists from the start at 0, so a rate over it is 0, not empty
        metrics.worker_restarts.labels(device=self.name)
        self.kernels: dict[str, Any] | None = None
        self.dispatcher: asyncio.Task | None = None
        self._process: Any = None  # multiprocessing's SpawnProcess
        self._conn: Connection | None = None
        self._generation = 0  # counts processes; messages of an older one are ignored
        self._started: asyncio.Future | None = None
        self._ready = asyncio.Event()
        self._batch_id = 0
        self._running: tuple[int, asyncio.Future, list[Job]] | None = None
        self._stopping = False
        self._restart_task: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def serving(self) -> bool:
        return self.state == "ready"

    # -- life cycle ---------------------------------------------------------------
    async def start(self) -> ModelSet[ModelCard]:
        """Spawn the process and wait until it has loaded and warmed its models."""
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe()
        from server.engine.worker_main import worker_main

        process = context.Process(
            target=worker_main, name=f"trdq-worker-{self.index}", daemon=True,
            args=(child_conn, self.settings, self.device_name, self.index, self.cpu_threads),
        )
        self._generation += 1
        self._started = loop.create_future()
        self._process, self._conn = process, parent_conn
        process.start()
        child_conn.close()  # only the child holds its end: its exit closes the pipe
        logger.info("worker %d on %s: process %d starting", self.index, self.name, process.pid)
        threading.Thread(
            target=self._read_forever, args=(loop, parent_conn, process, self._generation),
            name=f"trdq-worker-{self.index}-reader", daemon=True,
        ).start()
        cards, kernels = await self._started
        self.kernels = kernels
        self.state = "ready"
        self._ready.set()
        return cards

    async def until_ready(self) -> None:
        await self._ready.wait()

    async def stop(self) -> None:
        """Ask the process to stop (a running batch stops at its next step); terminate it
        if it has not exited after STOP_TIMEOUT_S. No worker process outlives this."""
        self._stopping = True
        self.state = "stopped"
        self._ready.clear()
        if self._restart_task is not None:
            self._restart_task.cancel()
        if self._running is not None:
            self._send(("cancel", self._running[0]))
        self._send(("stop",))
        process = self._process
        if process is not None:
            await asyncio.to_thread(_end_process, process, STOP_TIMEOUT_S)
        self._fail_running(errors.ShuttingDownError("the server shut down during generation"))

    # -- work ---------------------------------------------------------------------
    async def run(self, batch: list[Job], fault_hook: FaultHook | None) -> BatchResult:
        """Send the batch and wait for its result; cancels it in the worker once every
        job is cancelled. The fault hook (tests) must be picklable: a module-level
        function or a functools.partial of one."""
        if not self.serving:
            raise WorkerCrashedError(f"the worker on {self.name} is not running; retry")
        self._batch_id += 1
        batch_id = self._batch_id
        done = asyncio.get_running_loop().create_future()
        self._running = (batch_id, done, batch)
        try:
            self._send(("run", batch_id, [job.spec for job in batch], fault_hook), strict=True)
            cancel_sent = False
            while not done.done():
                await asyncio.wait({done}, timeout=CANCEL_POLL_S)
                if not cancel_sent and not done.done() and all(
                        job.cancelled.is_set() for job in batch):
                    self._send(("cancel", batch_id))
                    cancel_sent = True
            return done.result()
        except asyncio.CancelledError:  # the engine is stopping: stop the batch in the worker
            if not done.done():
                self._send(("cancel", batch_id))
            raise
        finally:
            self._running = None

    def _send(self, message: tuple, strict: bool = False) -> None:
        try:
            if self._conn is not None:
                self._conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            if strict:
                raise WorkerCrashedError(
                    f"the worker process on {self.name} is gone; it is being restarted, "
                    "and the server keeps serving"
                ) from None

    # -- messages from the process (the reader thread hands them to the loop) ---------
    def _read_forever(self, loop: asyncio.AbstractEventLoop, conn: Connection, process,
                      generation: int) -> None:
        while True:
            try:
                if conn.poll(0.5):
                    message = conn.recv()
                elif process.is_alive():
                    continue
                else:
                    break
            except (EOFError, OSError):
                break
            if not _call_soon(loop, self._on_message, generation, message):
                break
        conn.close()
        process.join(timeout=5)
        _call_soon(loop, self._on_exit, generation, process.exitcode)

    def _on_message(self, generation: int, message: tuple) -> None:
        if generation != self._generation:
            return
        kind = message[0]
        if kind in ("ready", "result", "error"):
            replay(self.metrics, message[-1])
        if kind == "ready":
            if self._started is not None and not self._started.done():
                self._started.set_result((message[1], message[2]))
        elif kind == "start_failed":
            if self._started is not None and not self._started.done():
                self._started.set_exception(RuntimeError(
                    f"the worker on {self.name} failed to start: {message[1]}"))
        elif kind == "progress":
            if self._running is not None and self._running[0] == message[1]:
                for job in self._running[2]:
                    job.steps_done = message[2]
        elif kind in ("result", "error"):
            if self._running is None or self._running[0] != message[1]:
                return
            done = self._running[1]
            if done.done():
                return
            if kind == "result":
                done.set_result(message[2])
            else:
                done.set_exception(self._error_from(*message[2:6]))

    def _error_from(self, class_name: str, text: str, headers: dict, trace: str) -> Exception:
        """The worker's exception as the same ServiceError a thread worker would raise."""
        error_class = getattr(errors, class_name, None)
        if isinstance(error_class, type) and issubclass(error_class, errors.ServiceError):
            return error_class(text, headers=headers)
        logger.error("generation failed on %s:\n%s", self.name, trace)
        return GenerationFailedError(
            f"generation failed ({class_name}); the server keeps serving")

    def _on_exit(self, generation: int, exitcode: int | None) -> None:
        if generation != self._generation:
            return
        self._ready.clear()
        how = _describe_exit(exitcode)
        if self._started is not None and not self._started.done():
            self._started.set_exception(RuntimeError(
                f"the worker on {self.name} exited during start-up ({how}); see its log"))
            return
        if self._stopping or self.state != "ready":  # a failed start is its caller's to handle
            return
        logger.error("worker %d on %s exited (%s); restarting it", self.index, self.name, how)
        self.state = "restarting"
        self._fail_running(WorkerCrashedError(
            f"the worker process on {self.name} exited during generation ({how}); it is "
            "being restarted, and the server keeps serving"
        ))
        self._restart_task = asyncio.get_running_loop().create_task(
            self._restart_forever(), name=f"trdq-restart-{self.index}")

    def _fail_running(self, error: Exception) -> None:
        if self._running is not None and not self._running[1].done():
            self._running[1].set_exception(error)

    async def _restart_forever(self) -> None:
        delay_s = 1.0
        while not self._stopping:
            try:
                await self.start()
            except RuntimeError:
                logger.exception("worker %d on %s did not restart; again in %.0f s",
                                 self.index, self.name, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(30.0, delay_s * 2)
                continue
            self.restarts += 1
            self.metrics.worker_restarts.labels(device=self.name).inc()
            logger.info("worker %d on %s serving again (restart %d)", self.index, self.name,
                        self.restarts)
            return


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> bool:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: the server is gone
        return False
    return True


def _end_process(process, timeout_s: float) -> None:
    process.join(timeout_s)
    if process.is_alive():
        logger.warning("worker process %d did not stop in %.0f s; terminating it",
                       process.pid, timeout_s)
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join()


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def cpu_threads_per_worker(device_names: list[str]) -> int:
    """Intra-op threads for each CPU worker process when TRDQ_THREADS is unset: the
    cores split between them (one process each would otherwise take them all)."""
    cpu_workers = sum(1 for name in device_names if name == "cpu") or 1
    return max(1, (os.cpu_count() or 1) // cpu_workers)

