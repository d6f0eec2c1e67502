"""Errors in the OpenAI API's shape: ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status OpenAI (and llama-server, vLLM) use for the same fault."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SteerlingError

log = logging.getLogger("steerling_lite.serve")

# status -> (error type, default code)
KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    503: ("server_error", "server_overloaded"),
    500: ("server_error", "internal_error"),
}


class APIError(Exception):
    """A request the server refuses, as the OpenAI API reports it.

    Args:
        status: HTTP status (400 bad request, 401 bad key, 404 unknown model or route,
            413 body too large, 503 queue full, 500 internal error).
        message: one line saying what was wrong and what is expected.
        param: the request field at fault, if one is.
        code: a machine-readable code (default: the status's, see :data:`KINDS`).
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, default_code = KINDS.get(status, KINDS[400] if status < 500 else KINDS[500])
        self.code = code if code is not None else default_code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(exc: SteerlingError | ValueError, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 carrying a library error's message."""
    return APIError(400, str(exc), param, code)


def install_handlers(app: FastAPI) -> None:
    """Answer every error (ours, unknown routes, bad methods, anything unexpected) in the OpenAI shape."""

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}; see GET /v1/models and /health",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message).response()

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return APIError(400, describe_validation(exc.errors())).response()

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


def describe_validation(errors: list[dict[str, Any]] | Any) -> str:
    """One line from pydantic's error list: ``max_tokens: Input should be a valid integer``
    (the first error; ``(+N more)`` when there are more)."""
    errors = list(errors)
    if not errors:
        return "invalid request"
    e = errors[0]
    loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
    msg = f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid"))
    return msg + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")


def first_param(errors: list[dict[str, Any]] | Any) -> str | None:
    """The top-level request field of pydantic's first error."""
    errors = list(errors)
    loc = [p for p in errors[0].get("loc", ()) if p != "body"] if errors else []
    return str(loc[0]) if loc else None
