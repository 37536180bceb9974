"""API errors: every failure the server reports has a JSON body ``{"error": "<one line>"}``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str


_MEANINGS = {
    400: "the input cannot be used (an image without a face, a malformed SDP offer)",
    401: "the API key or the session token is missing",
    403: "wrong key or token, or a refused Origin or Host",
    404: "no such session or avatar",
    413: "the request body is over its limit",
    422: "a parameter is out of range or malformed",
    503: "at capacity; retry after Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the listed statuses with the JSON error model."""
    return {status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in statuses}


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")
