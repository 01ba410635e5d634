"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: every refusal the
server makes, and the handlers that turn FastAPI's and Starlette's own errors into the same shape."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# the union-member tags pydantic puts into a location ("prompt.str", "content.list[ContentPart]")
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-.*|[A-Z]\w*)$")


class APIError(Exception):
    """A refusal: the HTTP status and OpenAI's error fields (`param` names the request field)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, headers=self.headers,
                            content={"error": {"message": self.message, "type": self.type, "param": self.param,
                                               "code": self.code}})


def validation_error(errors: list[dict]) -> APIError:
    """The first of pydantic's errors as a 400 that names the field as the client wrote it."""
    first = errors[0]
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body" and not _TYPE_TAG.match(str(x)))
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"unsupported field {loc!r}: llmkit serve does not implement it", param=loc,
                        code="unsupported_field")
    if first.get("type") == "missing":
        return APIError(400, f"missing required field {loc!r}", param=loc, code="missing_field")
    return APIError(400, f"{loc}: {first.get('msg')} (got {first.get('input')!r})"[:500], param=loc,
                    code="invalid_value")


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error(list(exc.errors())).response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return APIError(exc.status_code, str(exc.detail), type="invalid_request_error").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
