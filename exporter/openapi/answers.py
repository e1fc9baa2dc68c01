"""What comes back from the API: a body read up to its cap, decoded strictly, and a non-2xx answer as
the :class:`~exporter.errors.ApiError` it means (its code through the ingestion gate).

The client (:mod:`exporter.openapi.client`) sends; this module reads. Nothing here retries, signs or
budgets, and nothing an answer holds reaches a message unbounded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from exporter.errors import INVALID_RESPONSE, ApiError
from exporter.models import gated_request_id, parse_error_body

__all__ = ["MAX_MESSAGE", "decode_json", "describe", "error_from_response", "read_body"]

MAX_MESSAGE = 300


def _short(message: str) -> str:
    # SignatureDoesNotMatch quotes the server's string to sign: no secret, but long and noisy.
    cut = message.lower().find("server string to sign is:")
    if cut >= 0:
        message = message[:cut].rstrip()
    message = " ".join(message.split())
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _retry_after(value: str | None) -> float | None:
    """``x-acs-retry-after`` (milliseconds) to seconds; ignored unless a positive integer."""
    if not value:
        return None
    try:
        ms = int(value.strip())
    except ValueError:
        return None
    return ms / 1000.0 if ms > 0 else None


def decode_json(body: bytes) -> Any:
    """A JSON body decoded strictly: UTF-8 only, or ``ValueError``.

    ``json.loads`` on bytes would accept encoded lone surrogates (``\xed\xa0\x80``) and other
    encodings; JSON on the wire is UTF-8 (RFC 8259). Nesting deeper than the parser's stack is a
    ``ValueError`` here too.
    """
    try:
        return json.loads(body.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def error_from_response(action: str, status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """The :class:`ApiError` of a non-2xx answer: its gated JSON body, or ``InvalidResponse``.

    A body without a code, or whose code the ingestion gate refuses (not of the API's shape, too long,
    carrying a secret), is ``InvalidResponse``: an attacker-chosen string never becomes a label.
    """
    retry_after = _retry_after(headers.get("x-acs-retry-after"))
    header_rid = gated_request_id(headers.get("x-acs-request-id"))
    try:
        data = decode_json(body)
    except ValueError:
        data = None
    parsed = parse_error_body(data)
    request_id = parsed.request_id or header_rid
    if parsed.code is None:
        what = parsed.refused or "without a JSON error body"
        return ApiError(
            code=INVALID_RESPONSE,
            message=f"{action}: HTTP {status} {what}",
            http_status=status,
            request_id=request_id,
            action=action,
            retry_after=retry_after,
        )
    return ApiError(
        code=parsed.code,
        message=_short(parsed.message),
        http_status=status,
        request_id=request_id,
        action=action,
        retry_after=retry_after,
    )


async def read_body(action: str, resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, refusing more than ``cap`` bytes without buffering past the cap (``InvalidResponse``)."""
    length = resp.content_length
    if length is not None and "Content-Encoding" not in resp.headers:
        if length > cap:
            resp.close()
            raise _too_large(action, resp, f"{length} bytes announced", cap)
        return await resp.read()
    buf = bytearray()
    stream = resp.content
    while chunk := await stream.readany():
        buf += chunk
        if len(buf) > cap:
            resp.close()  # drop the connection rather than drain the rest
            raise _too_large(action, resp, f"more than {cap} bytes", cap)
    return bytes(buf)


def _too_large(action: str, resp: aiohttp.ClientResponse, what: str, cap: int) -> ApiError:
    return ApiError(
        code=INVALID_RESPONSE,
        message=f"{action}: response too large ({what}; limit {cap})",
        http_status=resp.status,
        request_id=gated_request_id(resp.headers.get("x-acs-request-id")),
        action=action,
    )


def describe(exc: BaseException) -> str:
    """A transport failure in one line of at most a few hundred characters (type and text)."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
