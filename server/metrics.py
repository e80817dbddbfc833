"""Every Prometheus metric of the service, declared once (names: DESIGN.md §3).

Metrics live on a registry owned by the app (no module-level singletons), so tests can
build several apps in one process. Units are base units (seconds, bytes).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


class Metrics:
    """The service's metrics on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.request_duration = Histogram(
            "trdq_request_duration_seconds", "HTTP request latency.",
            ["endpoint", "status"], buckets=REQUEST_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "trdq_queue_wait_seconds", "Time a generation waited in the queue.",
            buckets=REQUEST_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("trdq_queue_depth", "Generations waiting.", registry=r)
        self.inflight = Gauge(
            "trdq_inflight_requests", "Generation requests accepted and not finished.", registry=r
        )
        self.batch_size = Histogram(
            "trdq_batch_size", "Requests per pipeline call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.stage_duration = Histogram(
            "trdq_stage_duration_seconds", "Time per generation stage.",
            ["model", "quant", "stage"], buckets=STAGE_BUCKETS, registry=r,
        )
        self.denoise_step = Histogram(
            "trdq_denoise_step_seconds",
            "One denoiser forward (one sampler step), timed on the device (CUDA events), "
            "observed when its generation ends.",
            ["model", "quant", "group"], buckets=STEP_BUCKETS, registry=r,
        )
        self.group_switches = Counter(
            "trdq_quant_group_switches", "Timestep-group changes seen by quantized layers.",
            ["model"], registry=r,
        )
        self.generated_images = Counter(
            "trdq_generated_images", "Images generated.", registry=r
        )
        self.generated_video_frames = Counter(
            "trdq_generated_video_frames", "Video frames generated.", registry=r
        )
        self.device_memory = Gauge(
            "trdq_device_memory_bytes",
            "Device memory: allocated/reserved/peak/total (CPU: resident memory; total: limit).",
            ["device", "kind"], registry=r,
        )
        self.weight_bytes = Gauge(
            "trdq_model_weight_bytes", "Bytes of weights held, by component and dtype.",
            ["model", "quant", "component", "dtype"], registry=r,
        )
        self.calibration_cache = Counter(
            "trdq_calibration_cache", "Calibration cache look-ups.", ["result"], registry=r
        )
        self.errors = Counter("trdq_errors", "Errors by type.", ["type"], registry=r)
        self.cancellations = Counter(
            "trdq_cancelled_generations",
            "Generations cancelled before finishing, by reason "
            "(client gone, timeout, user DELETE, shutdown).",
            ["reason"], registry=r,
        )
        self.worker_restarts = Counter(
            "trdq_worker_restarts",
            "Worker processes started again after one exited unexpectedly (TRDQ_WORKER_MODE=process).",
            ["device"], registry=r,
        )
        self.jobs_stored = Gauge(
            "trdq_jobs_stored", "Async jobs held (queued, running or finished, not expired).",
            registry=r,
        )
        for result in ("hit", "miss", "invalid"):
            self.calibration_cache.labels(result=result)
