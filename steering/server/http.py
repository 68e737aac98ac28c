"""HTTP plumbing: bounded body reading, the API-key check, error handlers, the OpenAPI schema, request metrics."""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, from_validation_errors
from .metrics import ServerMetrics


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``limit`` bytes, 400 if it is not a JSON object.

    The size is checked against ``Content-Length`` first and again while
    reading, so a client that lies about it (or streams) is stopped as well.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # the parser recursed past Python's limit
        body = None
    if body is None or nesting_depth(body) > MAX_DEPTH:
        raise APIError(400, f"the request body nests arrays and objects more than {MAX_DEPTH} deep", code="invalid_json")
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


# No valid request nests deeper than a few levels; a deep one would make
# validation and error messages recurse, so it is refused before either.
MAX_DEPTH = 32


def nesting_depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"request body of {size} bytes is over the limit of {limit} bytes (max_body_bytes)", code="request_too_large")


def check_api_key(request: Request, key: str | None) -> None:
    """Raise a 401 unless ``Authorization: Bearer <key>`` matches (no key configured: open)."""
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'", code="missing_api_key", headers=challenge)
    if not secrets.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "incorrect API key", code="invalid_api_key", headers=challenge)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, ours or the framework's, with an OpenAI-style body."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"unknown URL {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        code = "not_found" if exc.status_code == 404 else None
        return error_response(APIError(exc.status_code, message, code=code, headers=exc.headers))  # 405: Allow

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(from_validation_errors(exc.errors()))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the exception itself once this response is sent.
        return error_response(APIError(500, f"internal server error: {type(exc).__name__}", code="internal_error"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def install_openapi(app: FastAPI, bodies: list[type[BaseModel]]) -> None:
    """Serve ``/openapi.json`` with the JSON schemas of ``bodies``.

    The completion routes read their body themselves (bounded, with our own
    errors), so FastAPI does not see their models; the routes name them with
    `steering.server.app.request_body` and this adds their schemas.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for body in bodies:
                full = body.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(full.pop("$defs", {}))
                components[body.__name__] = full
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class MetricsMiddleware:
    """Count every HTTP request by route (known paths only) and status."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.http_requests.labels(route=route, status=str(status)).inc()
