"""Domain exceptions and the one table that maps them to HTTP replies.

Every error reply has the shape {"error": {"type": ..., "message": ...}}.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors the service reports to clients."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequestError(ServiceError):
    status_code, error_type = 422, "invalid_request"


class NotAcceptableError(ServiceError):
    status_code, error_type = 406, "not_acceptable"


class UnauthorizedError(ServiceError):
    status_code, error_type = 401, "unauthorized"


class PayloadTooLargeError(ServiceError):
    status_code, error_type = 413, "payload_too_large"


class QueueFullError(ServiceError):
    status_code, error_type = 429, "queue_full"


class NotReadyError(ServiceError):
    status_code, error_type = 503, "not_ready"


class ShuttingDownError(ServiceError):
    status_code, error_type = 503, "shutting_down"


class JobNotFoundError(ServiceError):
    status_code, error_type = 404, "job_not_found"


class JobNotFinishedError(ServiceError):
    status_code, error_type = 409, "job_not_finished"


class TooManyJobsError(ServiceError):
    status_code, error_type = 429, "too_many_jobs"


class ModelUnavailableError(ServiceError):
    status_code, error_type = 404, "model_unavailable"


class DeviceOutOfMemoryError(ServiceError):
    status_code, error_type = 503, "device_out_of_memory"


class GenerationTimeoutError(ServiceError):
    status_code, error_type = 504, "timeout"


class GenerationFailedError(ServiceError):
    status_code, error_type = 500, "generation_failed"


class GenerationCancelledError(ServiceError):
    status_code, error_type = 499, "cancelled"


def error_body(error_type: str, message: str, **extra) -> dict:
    return {"error": {"type": error_type, "message": message, **extra}}


def _describe_validation_error(exc: RequestValidationError) -> tuple[str, list[dict]]:
    fields = []
    for err in exc.errors():
        location = [str(part) for part in err.get("loc", ()) if part != "body"]
        field = ".".join(location) or "body"
        fields.append({"field": field, "message": err.get("msg", "invalid")})
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or "invalid request"
    return message, fields


def install_error_handlers(app: FastAPI, on_error=None) -> None:
    """Register the exception -> reply table. `on_error(type)` counts each error."""

    def count(error_type: str) -> None:
        if on_error is not None:
            on_error(error_type)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        count(exc.error_type)
        return JSONResponse(
            error_body(exc.error_type, exc.message), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        count("invalid_request")
        message, fields = _describe_validation_error(exc)
        return JSONResponse(error_body("invalid_request", message, fields=fields), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:
            # FastAPI's reply to a body it cannot decode (e.g. not UTF-8): bad input, so the
            # same 422 as every other invalid request (and the status the schema documents).
            count("invalid_request")
            return JSONResponse(
                error_body("invalid_request", f"body: {exc.detail}"), 422, headers=exc.headers
            )
        error_type = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(
            exc.status_code, "http_error"
        )
        count(error_type)
        return JSONResponse(
            error_body(error_type, str(exc.detail)), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        count("internal_error")
        return JSONResponse(error_body("internal_error", "internal server error"), 500)
