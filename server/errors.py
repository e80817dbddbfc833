"""Domain exceptions and the one table that maps them to HTTP replies.

Every error reply has the shape {"error": {"type": ..., "message": ...}}.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
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


class WorkerCrashedError(ServiceError):
    """A worker process died while running the request's batch (it is restarted)."""

    status_code, error_type = 500, "worker_crashed"


class GenerationCancelledError(ServiceError):
    status_code, error_type = 499, "cancelled"


def error_body(error_type: str, message: str, **extra) -> dict:
    return {"error": {"type": error_type, "message": message, **extra}}


#: pydantic's wording for a few error types, said the way a client reads it.
VALIDATION_MESSAGES = {
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "int_type": "must be an integer",
    "string_type": "must be a string",
}


def _describe_validation_error(exc: RequestValidationError) -> tuple[str, list[dict]]:
    fields, sentences = [], []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # FastAPI reports an undecodable body at ("body", <character offset>).
            reason = (err.get("ctx") or {}).get("error")
            fields.append({"field": "body", "message": "not valid JSON"})
            sentences.append("body is not valid JSON" + (f" ({reason})" if reason else ""))
            continue
        location = [str(part) for part in err.get("loc", ()) if part != "body"]
        field = ".".join(location) or "body"
        message = VALIDATION_MESSAGES.get(err.get("type", ""), err.get("msg", "invalid"))
        fields.append({"field": field, "message": message})
        sentences.append(f"{field}: {message}")
    return "; ".join(sentences) or "invalid request", fields


class MethodsByPath:
    """Every method some route serves at a path, for Allow headers.

    Starlette's 405 names only the first route that matched the path (GET for
    /jobs/{id}, not its DELETE). Built from the routers' own routes, after they are
    included (app.state.methods_by_path)."""

    def __init__(self, routes) -> None:
        self.routes = [route for route in routes
                       if hasattr(route, "path_regex") and getattr(route, "methods", None)]

    def allowed(self, path: str) -> list[str]:
        methods = {"OPTIONS"}
        for route in self.routes:
            if route.path_regex.match(path):
                methods |= set(route.methods)
        return sorted(methods)


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
        headers = exc.headers
        methods_by_path = getattr(request.app.state, "methods_by_path", None)
        if exc.status_code == 405 and methods_by_path is not None:
            allow = ", ".join(methods_by_path.allowed(request.url.path))
            if request.method == "OPTIONS":
                # No CORS preflight here (CORS is off or the origin is not allowed):
                # OPTIONS is a plain question about the methods (RFC 9110 9.3.7).
                return Response(status_code=204, headers={"Allow": allow})
            headers = {**(headers or {}), "Allow": allow}
        error_type = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(
            exc.status_code, "http_error"
        )
        count(error_type)
        return JSONResponse(
            error_body(error_type, str(exc.detail)), exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        count("internal_error")
        return JSONResponse(error_body("internal_error", "internal server error"), 500)
