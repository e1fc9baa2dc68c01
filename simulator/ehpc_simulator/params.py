"""Reading and validating the API's request parameters (query string and form body)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from ehpc_simulator.acs3 import decode_query

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


class ParamError(Exception):
    """A request parameter failed validation (answered ``InvalidParams`` naming it)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def read_params(raw_query: str, content_type: str, body: bytes) -> dict[str, str]:
    """Query parameters, then form-body ones (the body wins); ParamError("Body") for a non-UTF-8 form.

    The query is decoded exactly as the signature check decoded it, so the parameters acted on are
    the parameters that were signed.
    """
    params = dict(decode_query(raw_query))
    if body and content_type.split(";", 1)[0].strip().lower() == FORM_CONTENT_TYPE:
        try:
            form = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ParamError("Body") from None
        params.update(decode_query(form))
    return params


def json_list(params: Mapping[str, str], name: str) -> list[str] | None:
    """A JSON-array-of-strings parameter (``["a","b"]``), de-duplicated in order; None when absent."""
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ParamError(name) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamError(name)
    return list(dict.fromkeys(value))


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    """An integer in ``low..high`` (``high`` None: no bound); ``default`` when absent or empty."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParamError(name) from None
    if value < low or (high is not None and value > high):
        raise ParamError(name)
    return value


def enum_param(params: Mapping[str, str], name: str, allowed: Iterable[str]) -> str | None:
    """One of ``allowed``; None when absent or empty."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise ParamError(name)
    return value
