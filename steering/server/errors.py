"""OpenAI-style errors: one exception type, one JSON body shape.

Every failure a client can cause becomes an `APIError` carrying the HTTP
status and the four fields OpenAI's clients read::

    {"error": {"message": "...", "type": "...", "param": "...", "code": "..."}}

``param`` names the offending field in the request body with the path a
reader would write (``steering[1].coef``), so a client can point at it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Error ``type`` per status, as OpenAI's API reports them.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "overloaded_error",
}


class APIError(Exception):
    """An error answered to the client as an OpenAI-style JSON body.

    Args:
        status: HTTP status code.
        message: a sentence naming the field and the value at fault.
        param: the request field at fault (``steering[0].coef``), if any.
        code: a stable machine-readable code (``vector_not_found``).
        headers: extra response headers (``Retry-After`` for 503s).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"


def field_path(loc: Sequence[str | int]) -> str:
    """Render a pydantic error location as a body path: ``("steering", 0, "coef")`` -> ``steering[0].coef``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation_errors(errors: Sequence[Mapping[str, Any]]) -> APIError:
    """A 422 for the first pydantic error, naming its field and the value received."""
    first = errors[0]
    # Tagged unions and str|list fields add type names to the location
    # (``stop.str``, ``content.list[...]``); they are not body fields.
    loc = [p for p in first.get("loc", ()) if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]
    param = field_path(loc) or None
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        message = f"unrecognized request argument {param!r}"
        return APIError(422, message, param=param, code="unknown_parameter")
    if first.get("type") == "missing":
        return APIError(422, f"missing required field {param!r}", param=param, code="missing_required_parameter")
    shown = _short(first.get("input"))
    message = f"{param}: {message} (got {shown})" if param else f"{message} (got {shown})"
    more = len(errors) - 1
    if more:
        message += f"; and {more} more error{'s' if more > 1 else ''}"
    return APIError(422, message, param=param, code="invalid_value")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-before", "literal"}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
