"""The body of a worker process (TRDQ_WORKER_MODE=process): one device, its own models.

Started with the ``spawn`` method (a fresh interpreter: CUDA-safe, no state inherited
from the server process), it applies the kernel switches, loads and quantizes its own
copy of every served variant (the calibration cache on disk is shared: writers take the
artifact's file lock, so workers starting together calibrate once), warms up, says
``ready``, then runs the batches the server process sends, one at a time.

Messages (tuples over one duplex pipe):

- server -> worker: ``("run", batch_id, specs, fault_hook)``, ``("cancel", batch_id)``,
  ``("stop",)``;
- worker -> server: ``("ready", cards, kernels, events)``, ``("start_failed", message)``,
  ``("progress", batch_id, steps_done)``, ``("result", batch_id, BatchResult, events)``,
  ``("error", batch_id, error_class, message, headers, traceback, events)``.

``events`` are the metric observations since the last message (remote_metrics). A pipe
that closes (the server process is gone) stops the worker at the next denoising step, so
a worker never outlives its server.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

import torch

from server.engine.execute import on_device, record_memory, run_batch, warm_up
from server.engine.models import configure_kernels, load_models
from server.engine.remote_metrics import MetricsRecorder
from server.errors import GenerationCancelledError, ServiceError
from server.settings import Settings
from trdq.pipeline import resolve_device
from trdq.runtime.host_memory import configure_host_malloc

logger = logging.getLogger(__name__)


def worker_main(conn: Connection, settings: Settings, device_name: str, index: int,
                cpu_threads: int) -> None:
    """Entry point of the worker process (the target of ``multiprocessing.Process``)."""
    # Ctrl-C in a terminal reaches the whole process group: the server process drains and
    # then stops its workers; a worker interrupted by it would look like a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [worker {index} {device_name}] %(name)s: %(message)s",
    )
    configure_host_malloc(settings.host_malloc)  # a spawned interpreter: its own malloc
    recorder = MetricsRecorder()
    try:
        kernels = configure_kernels(settings)
        device = resolve_device(device_name)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # graphs, Triton and the allocator default here
        elif not settings.threads:
            torch.set_num_threads(cpu_threads)  # CPU "devices" share the cores
        with on_device(device):
            models = load_models(settings, recorder, device)
        if settings.warmup:
            warm_up(models, device, settings.warmup_batch_size_list,
                    settings.warmup_width_height, settings.warmup_steps)
        record_memory(recorder, device)
        cards = models.cards()
    except Exception as error:  # the server process reports it and refuses to start
        logger.exception("worker start-up failed")
        _send(conn, ("start_failed", f"{type(error).__name__}: {error}"))
        return
    _send(conn, ("ready", cards, kernels, recorder.drain()))
    logger.info("worker %d ready on %s (pid %d)", index, device, os.getpid())

    inbox: queue.Queue[tuple] = queue.Queue()
    cancelled: set[int] = set()
    server_gone = threading.Event()
    threading.Thread(target=_read_forever, args=(conn, inbox, cancelled, server_gone),
                     name="trdq-worker-inbox", daemon=True).start()
    while True:
        message = inbox.get()
        if message[0] == "stop":
            break
        _, batch_id, specs, fault_hook = message

        def on_step(steps_done: int, batch_id: int = batch_id) -> None:
            if batch_id in cancelled or server_gone.is_set():
                raise GenerationCancelledError("request cancelled")
            _send(conn, ("progress", batch_id, steps_done))

        reply: tuple[Any, ...]
        try:
            result = run_batch(models, device, specs, on_step, recorder, fault_hook)
            reply = ("result", batch_id, result, recorder.drain())
        except ServiceError as error:
            reply = ("error", batch_id, type(error).__name__, error.message, error.headers,
                     "", recorder.drain())
        except Exception as error:
            logger.exception("generation failed")
            reply = ("error", batch_id, type(error).__name__, "", {}, traceback.format_exc(),
                     recorder.drain())
        cancelled.discard(batch_id)
        if not _send(conn, reply):
            break
    logger.info("worker %d on %s stopping", index, device)


def _read_forever(conn: Connection, inbox: queue.Queue, cancelled: set[int],
                  server_gone: threading.Event) -> None:
    """Inbox thread: cancellations take effect at once, work and stop go in order."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server process is gone: stop, never linger
            server_gone.set()
            inbox.put(("stop",))
            return
        if message[0] == "cancel":
            cancelled.add(message[1])
        else:
            inbox.put(message)


def _send(conn: Connection, message: tuple) -> bool:
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, OSError):
        return False
    return True
