"""Async jobs for long work: submit (202), poll, stream progress (SSE), fetch, cancel.

POST /jobs/image|video take the same bodies as /generate/*, queue the work in the same
engine queue (so the same 429 and batching apply) and answer 202 with the job's id.
A job's result (the encoded media) is kept for TRDQ_JOB_TTL_S after it finishes and at
most TRDQ_MAX_JOBS jobs are held: a new job evicts the oldest finished one, and when
every held job is still unfinished the new one is refused with 429.
"""

# No `from __future__ import annotations`: FastAPI must see the body models built at run time.

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.convertors import StringConvertor, register_url_convertor

from server import media
from server.engine.jobs import Job, JobSpec, JobState
from server.errors import (
    GenerationCancelledError,
    GenerationFailedError,
    JobNotFinishedError,
    JobNotFoundError,
    NotAcceptableError,
    ServiceError,
    TooManyJobsError,
    error_body,
)
from server.negotiation import negotiate
from server.routes.generate import (
    ERROR_RESPONSES,
    encode_output,
    image_payload,
    image_spec,
    media_headers,
    timings_of,
    video_payload,
    video_spec,
)
from server.schemas import ErrorDetail, ErrorResponse, ImageResponse, VideoResponse

logger = logging.getLogger(__name__)

JOB_ID = Path(pattern=r"^[0-9a-f]{24}$", description="The id POST /jobs/* returned")


class JobIdConvertor(StringConvertor):
    """A path segment that is not one of the POST-only names /jobs/image and /jobs/video.

    Without it `GET /jobs/image` matches `GET /jobs/{job_id}` and fails the id pattern
    (422), where the client only used the wrong method on a real resource (405, with
    Allow: POST). Other malformed ids still reach the route and get its 422."""

    regex = r"(?!(?:image|video)(?:/|$))[^/]+"


register_url_convertor("job_id", JobIdConvertor())  # Starlette's registry is global
#: SSE: progress is sampled this often; a comment line keeps idle proxies from closing.
EVENT_POLL_S = 0.1
KEEPALIVE_S = 15.0


class JobProgress(BaseModel):
    step: int
    total: int


class JobStatus(BaseModel):
    id: str
    task: Literal["image", "video"]
    state: JobState
    progress: JobProgress
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: ErrorDetail | None = None
    result_url: str | None = None


@dataclass
class JobRecord:
    job: Job
    spec: JobSpec
    output_format: str
    fps: int | None  # videos only
    payload: dict | None = None  # the reply of /generate/* for this job
    blobs: list[bytes] = field(default_factory=list)
    headers: dict = field(default_factory=dict)
    error: ServiceError | None = None
    finished_monotonic: float | None = None
    finished_unix: float | None = None
    finisher: asyncio.Task | None = None

    @property
    def state(self) -> JobState:
        if self.payload is not None:
            return "succeeded"
        if self.error is not None:
            return "cancelled" if self.error.error_type == "cancelled" else "failed"
        state = self.job.state
        return "running" if state == "succeeded" else state  # still encoding

    def status(self) -> dict:
        state = self.state
        return JobStatus(
            id=self.job.id, task=self.spec.task, state=state,
            progress=JobProgress(
                step=self.spec.num_inference_steps if state == "succeeded" else self.job.steps_done,
                total=self.spec.num_inference_steps,
            ),
            created_at=round(self.job.created_unix, 3),
            started_at=None if self.job.started_unix is None else round(self.job.started_unix, 3),
            finished_at=None if self.finished_unix is None else round(self.finished_unix, 3),
            error=None if self.error is None else ErrorDetail(
                type=self.error.error_type, message=self.error.message
            ),
            result_url=f"/jobs/{self.job.id}/result" if state == "succeeded" else None,
        ).model_dump()


class JobStore:
    """Async jobs by id, bounded in count and in time after they finish."""

    def __init__(self, engine, job_timeout_s: float, ttl_s: float, max_jobs: int) -> None:
        self.engine = engine
        self.job_timeout_s = job_timeout_s
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self._records: dict[str, JobRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def add(self, spec: JobSpec, output_format: str, fps: int | None) -> JobRecord:
        self.purge()
        if len(self._records) >= self.max_jobs and not self._evict_oldest_finished():
            raise TooManyJobsError(
                f"{self.max_jobs} jobs are unfinished; retry later",
                headers={"Retry-After": "5"},
            )
        job = self.engine.enqueue(spec)
        record = JobRecord(job=job, spec=spec, output_format=output_format, fps=fps)
        record.finisher = asyncio.create_task(self._finish(record), name=f"job-{job.id}")
        self._records[job.id] = record
        self._publish()
        return record

    def get(self, job_id: str) -> JobRecord:
        self.purge()
        record = self._records.get(job_id)
        if record is None:
            raise JobNotFoundError(f"no job {job_id} (unknown, deleted or expired)")
        return record

    def cancel_or_delete(self, job_id: str) -> dict:
        """Cancel an unfinished job (kept, state cancelled); drop a finished one."""
        record = self.get(job_id)
        if record.finished_monotonic is None:
            self.engine.cancel(record.job, "user")
            if record.finisher is not None:
                record.finisher.cancel()
            return record.status()
        status = record.status()
        del self._records[job_id]
        self._publish()
        return status

    def purge(self) -> None:
        now = time.monotonic()
        expired = [
            job_id for job_id, record in self._records.items()
            if record.finished_monotonic is not None and now - record.finished_monotonic > self.ttl_s
        ]
        for job_id in expired:
            del self._records[job_id]
        if expired:
            self._publish()

    async def close(self) -> None:
        for record in self._records.values():
            if record.finisher is not None:
                record.finisher.cancel()
        self._records.clear()

    def _evict_oldest_finished(self) -> bool:
        finished = [r for r in self._records.values() if r.finished_monotonic is not None]
        if not finished:
            return False
        oldest = min(finished, key=lambda r: r.finished_monotonic or 0.0)  # all set here
        del self._records[oldest.job.id]
        return True

    def _publish(self) -> None:
        self.engine.metrics.jobs_stored.set(len(self._records))

    async def _finish(self, record: JobRecord) -> None:
        started = time.perf_counter()
        try:
            output = await self.engine.wait(record.job, self.job_timeout_s)
            encoded, encode_s = await encode_output(
                self.engine, output, record.output_format, record.fps
            )
            timings = timings_of(output, encode_s, started)
            if record.spec.task == "image":
                payload = image_payload(output, record.spec, encoded, record.output_format, timings)
            else:
                payload = video_payload(
                    output, record.spec, encoded, record.output_format, record.fps, timings
                )
            record.blobs, record.headers = encoded, media_headers(output)
            record.payload = payload
        except asyncio.CancelledError:
            record.error = _cancelled_error()
        except ServiceError as error:
            record.error = error
        except Exception:  # one job fails, the store keeps going
            logger.exception("job %s failed", record.job.id)
            record.error = GenerationFailedError("generation failed; the server keeps serving")
        finally:
            record.finished_monotonic = time.monotonic()
            record.finished_unix = time.time()


def _cancelled_error() -> ServiceError:
    return GenerationCancelledError("cancelled by request")


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def make_router(image_model, video_model) -> APIRouter:
    router = APIRouter(prefix="/jobs", tags=["jobs"])
    accepted: dict[int | str, dict[str, Any]] = {
        202: {"model": JobStatus, "description": "Accepted; poll GET /jobs/{id}"},
        **ERROR_RESPONSES,
    }

    def accepted_reply(record: JobRecord) -> JSONResponse:
        return JSONResponse(
            record.status(), status_code=202, headers={"Location": f"/jobs/{record.job.id}"}
        )

    @router.post("/image", status_code=202, response_model=JobStatus, responses=accepted,
                 summary="Queue an image generation; returns its job id")
    async def submit_image(body: image_model, request: Request):
        engine = request.app.state.engine
        record = request.app.state.jobs.add(image_spec(engine, body), body.output_format, None)
        return accepted_reply(record)

    @router.post("/video", status_code=202, response_model=JobStatus, responses=accepted,
                 summary="Queue a video generation; returns its job id")
    async def submit_video(body: video_model, request: Request):
        engine = request.app.state.engine
        record = request.app.state.jobs.add(
            video_spec(engine, body), body.output_format, body.fps
        )
        return accepted_reply(record)

    @router.get("/{job_id:job_id}", response_model=JobStatus, responses=ERROR_RESPONSES,
                summary="State and progress (step i of N) of a job")
    async def job_status(request: Request, job_id: str = JOB_ID):
        return request.app.state.jobs.get(job_id).status()

    @router.get("/{job_id:job_id}/events", responses={
        200: {"content": {"text/event-stream": {}},
              "description": "Server-sent events: `progress` while queued or running, "
                             "then one `end` event; each `data` is the job status JSON"},
        **ERROR_RESPONSES,
    }, response_class=StreamingResponse, summary="Stream a job's progress (SSE)")
    async def job_events(request: Request, job_id: str = JOB_ID):
        record = request.app.state.jobs.get(job_id)

        async def stream():
            last, last_sent = None, time.monotonic()
            while True:
                status = record.status()
                final = status["state"] in ("succeeded", "failed", "cancelled")
                if final:
                    yield _sse("end", status)
                    return
                snapshot = (status["state"], status["progress"]["step"])
                if snapshot != last:
                    yield _sse("progress", status)
                    last, last_sent = snapshot, time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    yield b": keep-alive\n\n"
                    last_sent = time.monotonic()
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.get("/{job_id:job_id}/result", response_model=ImageResponse | VideoResponse,
                responses={409: {"model": ErrorResponse}, **ERROR_RESPONSES},
                summary="The finished job's media (JSON, or raw bytes via Accept)")
    async def job_result(request: Request, job_id: str = JOB_ID):
        record = request.app.state.jobs.get(job_id)
        state = record.state
        if state in ("queued", "running"):
            raise JobNotFinishedError(f"job {job_id} is {state}", headers={"Retry-After": "1"})
        if state == "cancelled":
            return JSONResponse(error_body("job_cancelled", f"job {job_id} was cancelled"), 409)
        if state == "failed":
            error = record.error
            status = error.status_code if 400 <= error.status_code < 600 else 500
            return JSONResponse(error_body(error.error_type, error.message), status)
        formats = media.IMAGE_FORMATS if record.spec.task == "image" else media.VIDEO_FORMATS
        raw = negotiate(request.headers.get("accept"), formats, record.output_format)
        if raw is not None:
            if raw != record.output_format or len(record.blobs) != 1:
                raise NotAcceptableError(
                    f"this job holds {len(record.blobs)} {record.output_format} item(s); "
                    "ask for JSON or that single format"
                )
            return Response(record.blobs[0], media_type=formats[raw], headers=record.headers)
        return JSONResponse(record.payload, headers=record.headers)

    @router.delete("/{job_id:job_id}", response_model=JobStatus, responses=ERROR_RESPONSES,
                   summary="Cancel an unfinished job, or discard a finished job's result")
    async def job_delete(request: Request, job_id: str = JOB_ID):
        return request.app.state.jobs.cancel_or_delete(job_id)

    return router
