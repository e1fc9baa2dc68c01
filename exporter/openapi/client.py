"""The signed async client of the E-HPC Instant OpenAPI (ACS3-HMAC-SHA256, RPC style, version 2023-07-01).

One pooled aiohttp session per client; every attempt is budgeted (concurrency cap, then a QPS token),
signed with a fresh date and nonce, bounded by a timeout and a response-size cap, and every failure
surfaces as :class:`ApiError`. Retries (exponential backoff, full jitter, ``x-acs-retry-after`` as a lower
bound) are bounded by ``RetryConfig.max_attempts`` and ``max_elapsed_seconds``. Every ``Throttling.*``
answer and every other answer is reported to the budget, whose rate adapts (``api.adaptive_rate``).

Reading what comes back (the capped body, strict JSON, the ApiError of an error answer) is
:mod:`exporter.openapi.answers`. Why the rest is one module of about 500 lines: signing, budgeting and
retrying are the steps of one attempt, sharing its state (the prepared query, the deadline, the
observer); each step is a method of its own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import random
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

import aiohttp
import structlog
import yarl

from exporter import __version__
from exporter.config import ApiConfig
from exporter.credentials import Credential, CredentialSource, RefusableSource
from exporter.errors import CONNECTION_ERROR, CREDENTIAL_ERROR, INVALID_RESPONSE, TIMEOUT, ApiError
from exporter.models import (
    Image,
    ImagePage,
    ImageSummary,
    gated_request_id,
    parse_get_image,
    parse_list_images,
)
from exporter.openapi.answers import decode_json, describe, error_from_response, read_body
from exporter.openapi.budget import Budget
from exporter.openapi.signing import ALGORITHM, EMPTY_SHA256, canonical_query, signature

API_VERSION = "2023-07-01"
PRODUCT_HOST = "ehpcinstant"
USER_AGENT = (
    f"ehpc-image-exporter/{__version__} Python/{platform.python_version()} aiohttp/{aiohttp.__version__}"
)
DEFAULT_MAX_PAGES = 1000  # ListImages pages per listing unless the caller says otherwise
_QUERY_CACHE_MAX = 65_536  # GetImage requests prepared once per watched image, not once per refresh
# Every header the client sends is signed (as the SDK does); sorted, as the canonical request lists them.
SIGNED_HEADERS = (
    "accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
)
SIGNED_HEADERS_STS = (
    "accept;host;user-agent;x-acs-accesskey-id;x-acs-action;x-acs-content-sha256;x-acs-date;"
    "x-acs-security-token;x-acs-signature-nonce;x-acs-version"
)

# Answers that refuse the credential itself (not the request): the source drops it and fetches anew.
REFUSED_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeyId.Inactive",
        "InvalidSecurityToken.Expired",
        "InvalidSecurityToken.Malformed",
        "SignatureDoesNotMatch",
    }
)

log = structlog.get_logger("ehpc.api")
T = TypeVar("T")
_Prepared = tuple[str, yarl.URL]  # (canonical query, URL carrying exactly that query)


class ApiObserver(Protocol):
    """Told about every attempt (each retry counts), and about failures found across attempts."""

    def on_attempt(self, action: str, duration_seconds: float, error: ApiError | None) -> None:
        """Record one attempt, with its duration and its error or ``None``."""
        ...

    def on_failure(self, action: str, error: ApiError) -> None:
        """Record a failure of a whole call whose attempts each succeeded (ListImages paging that lies)."""
        ...


def new_nonce() -> str:
    """A fresh random UUID4 as 32 hex digits (what ``uuid.uuid4().hex`` gives, at half the cost)."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    return b.hex()


def compact_json_list(values: Sequence[str]) -> str:
    """The SDK's encoding of list parameters (``["a","b"]``), not flattened to ``X.1``/``X.2``."""
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)


def resolve_endpoint(api: ApiConfig) -> tuple[str, str]:
    """``(scheme, host)`` to call; ``host`` is the exact ``Host`` value, with any non-default port.

    ``api.endpoint`` may be ``host[:port]`` (scheme from ``api.protocol``) or a full ``http(s)://`` URL.
    Raises ``ValueError`` for an endpoint that is not a bare origin.
    """
    if not api.endpoint:
        suffix = "-vpc" if api.network == "vpc" else ""
        return api.protocol, f"{PRODUCT_HOST}{suffix}.{api.region_id}.aliyuncs.com"
    raw = api.endpoint.strip()
    url = yarl.URL(raw if "://" in raw else f"{api.protocol}://{raw}")
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"api.endpoint {raw!r}: expected host[:port] or an http(s):// URL")
    if url.user or url.password or url.path not in ("", "/") or url.query_string or url.fragment:
        raise ValueError(f"api.endpoint {raw!r}: only scheme, host and port are allowed")
    return url.scheme, url.host_port_subcomponent or url.host


class EhpcClient:
    """Signed, budgeted, retrying calls to one E-HPC Instant endpoint; use as ``async with``."""

    def __init__(
        self,
        api: ApiConfig,
        credentials: CredentialSource,
        *,
        observer: ApiObserver | None = None,
        account_budget: Budget | None = None,
    ) -> None:
        self._api = api
        self.credentials = credentials
        self._observer = observer
        self._scheme, self._host = resolve_endpoint(api)
        self.base_url = f"{self._scheme}://{self._host}/"
        # This endpoint's budget, within the account's when several regions share one.
        self.budget = Budget(api.qps, api.max_concurrency, account_budget, api.adaptive_rate)
        self._timeout = aiohttp.ClientTimeout(
            total=api.timeout_seconds, connect=min(api.connect_timeout_seconds, api.timeout_seconds)
        )
        # Headers that never change, computed once; the per-attempt ones are added to a copy.
        self._static_headers = {
            "host": self._host,
            "accept": "application/json",
            "user-agent": USER_AGENT,
            "x-acs-version": API_VERSION,
            "x-acs-content-sha256": EMPTY_SHA256,  # the body is always empty
        }
        # The canonical headers that precede x-acs-action, in sorted order (canonical_request's format).
        self._canonical_head = f"accept:application/json\nhost:{self._host}\nuser-agent:{USER_AGENT}\n"
        self._get_image_requests: dict[tuple[str, str | None, str | None, tuple[str, ...]], _Prepared] = {}
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self._date_second = -1
        self._date = ""

    @property
    def credentials(self) -> CredentialSource:
        """Where each attempt's credential comes from (a reload may put a fresh source in)."""
        return self._credentials

    @credentials.setter
    def credentials(self, source: CredentialSource) -> None:
        self._credentials = source
        self._refusable = source if isinstance(source, RefusableSource) else None

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> EhpcClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled session (a later call opens a new one)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is not None and not session.closed:
            return session
        ssl_context: ssl.SSLContext | bool = False
        if self._scheme == "https":
            ssl_context = ssl.create_default_context()
            if self._api.ca_file:
                ssl_context.load_verify_locations(cafile=self._api.ca_file)  # added to the default trust
        connector = aiohttp.TCPConnector(
            limit=self._api.max_concurrency, ssl=ssl_context, ttl_dns_cache=300, keepalive_timeout=10
        )
        # trust_env would re-read proxy variables and ~/.netrc on every request; resolve the proxy once.
        host_only = yarl.URL(self.base_url).host or ""
        self._proxy = (
            None
            if urllib.request.proxy_bypass(host_only)
            else (urllib.request.getproxies().get(self._scheme))
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            # No Accept-Encoding: identity bodies, so the size cap is the wire size. No Content-Type:
            # aiohttp would add an unsigned "application/octet-stream" to the bodiless POST (refused).
            skip_auto_headers=("Accept-Encoding", "Content-Type"),
            raise_for_status=False,
        )
        return self._session

    # -- public API --------------------------------------------------------------------------------------

    async def get_image(
        self,
        image_id: str,
        *,
        image_type: str | None = None,
        image_category: str | None = None,
        additional_region_ids: Sequence[str] = (),
        max_elapsed_seconds: float | None = None,
        max_regions: int = 50,
    ) -> Image:
        """GetImage for ``image_id``; the returned ``Image.image_id`` is the requested id.

        ``max_elapsed_seconds`` shortens ``RetryConfig.max_elapsed_seconds`` for this call. Like it, it
        counts from the first send: time queued behind the QPS/concurrency budget is not the image's fault.
        Only the requested regions are kept of the answer; one with more than ``max_regions`` region
        entries is ``InvalidResponse``.
        """
        key = (image_id, image_type, image_category, tuple(additional_region_ids))
        prepared = self._get_image_requests.get(key)
        if prepared is None:
            params = {"ImageId": image_id}
            if image_type:
                params["ImageType"] = image_type
            if image_category:
                params["ImageCategory"] = image_category
            if additional_region_ids:
                params["AdditionalRegionIds"] = compact_json_list(additional_region_ids)
            prepared = self._prepare(params)
            if len(self._get_image_requests) >= _QUERY_CACHE_MAX:
                self._get_image_requests.clear()
            self._get_image_requests[key] = prepared
        parse = functools.partial(
            parse_get_image,
            requested_id=image_id,
            requested_regions=additional_region_ids,
            max_regions=max_regions,
        )
        return await self._call("GetImage", prepared, parse, max_elapsed_seconds)

    async def list_images(
        self,
        *,
        image_type: str | None = None,
        image_category: str | None = None,
        image_ids: Sequence[str] = (),
        image_names: Sequence[str] = (),
        mode: str | None = None,
        page_size: int = 50,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> list[ImageSummary]:
        """ListImages, every page: continue while ``PageNumber*PageSize < TotalCount``, stop on an empty page.

        A server whose paging never ends raises ``InvalidResponse`` rather than looping: any page that
        repeats an image of an earlier page (A, B, A, B... as much as A, A), more pages than its first
        ``TotalCount`` allows, or more than ``max_pages``. The failure is reported to the observer.
        """
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        base: dict[str, str] = {"PageSize": str(page_size)}
        if image_type:
            base["ImageType"] = image_type
        if image_category:
            base["ImageCategory"] = image_category
        if image_ids:
            base["ImageIds"] = compact_json_list(image_ids)
        if image_names:
            base["ImageNames"] = compact_json_list(image_names)
        if mode:
            base["Mode"] = mode
        out: list[ImageSummary] = []
        seen: set[str] = set()
        page_limit = max_pages
        page_number = 1
        while True:
            prepared = self._prepare({**base, "PageNumber": str(page_number)})
            page = await self._call("ListImages", prepared, parse_list_images)
            if not page.images:
                break
            ids = {i.image_id for i in page.images}
            if not seen.isdisjoint(ids) or len(ids) < len(page.images):
                raise self._paging_error(f"page {page_number} repeats images of an earlier page", page)
            seen |= ids
            out.extend(page.images)
            size = page.page_size if page.page_size > 0 else page_size  # the server may cap PageSize
            if page_number == 1:
                page_limit = min(max_pages, -(-page.total_count // size) + 1)
            if page_number * size >= page.total_count:
                break
            page_number += 1
            if page_number > page_limit:
                raise self._paging_error(f"paging did not end after {page_limit} pages", page)
        return out

    def _paging_error(self, what: str, page: ImagePage) -> ApiError:
        error = ApiError(
            code=INVALID_RESPONSE,
            message=f"ListImages: {what}",
            http_status=200,
            request_id=page.request_id or None,
            action="ListImages",
        )
        observer = self._observer
        if observer is not None:
            observer.on_failure("ListImages", error)
        return error

    # -- machinery ---------------------------------------------------------------------------------------

    def _prepare(self, params: Mapping[str, str]) -> _Prepared:
        """The canonical query of ``params`` and the URL that carries it."""
        query = canonical_query(params)
        # encoded=True: the bytes on the wire are exactly the canonical query that was signed.
        return query, yarl.URL(f"{self.base_url}?{query}" if query else self.base_url, encoded=True)

    async def _call(
        self, action: str, prepared: _Prepared, parse: Callable[[Any], T], max_elapsed: float | None = None
    ) -> T:
        """One logical call: budgeted attempts with backoff until success, a final error or the deadline."""
        query, url = prepared
        retry = self._api.retry
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        error: ApiError | None = None
        attempt = 0
        while True:
            async with self.budget:
                start = loop.time()
                if deadline is None:
                    # The retry clock starts at the first send, not while queued behind the budget.
                    limit = retry.max_elapsed_seconds
                    deadline = start + (limit if max_elapsed is None else min(limit, max_elapsed))
                elif start >= deadline and error is not None:
                    raise error  # the wait for a send slot used up the time left
                # The last attempts are cut to the deadline so the call as a whole is bounded by it; the
                # cut shows as a Timeout of that attempt, observed and counted like any other.
                attempt_deadline = start + min(deadline - start, self._api.timeout_seconds)
                try:
                    result = parse(await self._attempt(action, url, query, attempt_deadline))
                except ApiError as exc:
                    error = exc
                    if error.action is None:
                        error.action = action
                    self._observe(action, loop.time() - start, error)
                    self._adapt(error, start, loop.time())
                except Exception as exc:  # the gate's last line: a parser bug is a bad answer, not a crash
                    log.exception("api_parse_failed", action=action)
                    error = ApiError(
                        code=INVALID_RESPONSE,
                        message=f"{action}: unparseable answer ({type(exc).__name__})",
                        action=action,
                    )
                    self._observe(action, loop.time() - start, error)
                else:
                    self._observe(action, loop.time() - start, None)
                    self.budget.on_success()
                    return result
            attempt += 1
            if attempt >= retry.max_attempts or not error.retryable:
                raise error
            ceiling = min(retry.max_delay_seconds, retry.base_delay_seconds * 2 ** (attempt - 1))
            delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
            if error.retry_after is not None and error.retry_after > delay:
                delay = error.retry_after
            if loop.time() + delay > deadline:
                raise error  # never sleep past the deadline: the last error is the answer
            log.debug("api_retry", action=action, code=error.code, attempt=attempt, delay=round(delay, 3))
            await asyncio.sleep(delay)

    def _adapt(self, error: ApiError, sent_at: float, now: float) -> None:
        """Tell the budget how an attempt that failed went: a throttle cuts, an answer is a success.

        Any other answer from the API (even an error) means this rate was accepted; a local failure
        (timeout, connection, credentials) says nothing about the rate and changes nothing.
        """
        if error.code.startswith("Throttling"):  # as is_retryable: Throttling, .User, .Api
            before = self.budget.qps
            if self.budget.on_throttle(sent_at, now):
                log.info(
                    "api_rate_cut",
                    host=self._host,
                    code=error.code,
                    qps_before=round(before, 3),
                    qps=round(self.budget.qps, 3),
                )
        elif error.http_status:
            self.budget.on_success()

    def _observe(self, action: str, duration: float, error: ApiError | None) -> None:
        observer = self._observer
        if observer is None:
            return
        try:
            observer.on_attempt(action, duration, error)
        except Exception:  # an observer bug must not turn a call into a non-ApiError failure
            log.exception("api_observer_failed", action=action)

    def _headers(
        self, action: str, query: str, access_key_id: str, secret: str, token: str | None
    ) -> dict[str, str]:
        """The signed headers of one attempt: fresh date and nonce, STS headers when there is a token.

        Equivalent to ``signing.sign`` over the same headers (the tests check it against the SDK), with
        the canonical request assembled from precomputed parts: it runs once per attempt.
        """
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        date = self._date
        nonce = new_nonce()
        headers = self._static_headers.copy()
        headers["x-acs-action"] = action
        headers["x-acs-date"] = date
        headers["x-acs-signature-nonce"] = nonce
        tail = f"x-acs-signature-nonce:{nonce}\nx-acs-version:{API_VERSION}\n\n"
        if token:
            headers["x-acs-accesskey-id"] = access_key_id
            headers["x-acs-security-token"] = token
            signed = SIGNED_HEADERS_STS
            canonical = (
                f"POST\n/\n{query}\n{self._canonical_head}x-acs-accesskey-id:{access_key_id.strip()}\n"
                f"x-acs-action:{action}\nx-acs-content-sha256:{EMPTY_SHA256}\nx-acs-date:{date}\n"
                f"x-acs-security-token:{token.strip()}\n{tail}{signed}\n{EMPTY_SHA256}"
            )
        else:
            signed = SIGNED_HEADERS
            canonical = (
                f"POST\n/\n{query}\n{self._canonical_head}x-acs-action:{action}\n"
                f"x-acs-content-sha256:{EMPTY_SHA256}\nx-acs-date:{date}\n{tail}{signed}\n{EMPTY_SHA256}"
            )
        sig = signature(secret, canonical)
        headers["authorization"] = (
            f"{ALGORITHM} Credential={access_key_id},SignedHeaders={signed},Signature={sig}"
        )
        return headers

    async def _credential(self, action: str, deadline: float) -> Credential:
        """The attempt's credential, waited for no later than the attempt's deadline.

        The wait is the attempt's time, so the image's own limit bounds it too; a fetch that outlasts it
        goes on for the callers that share it (the source bounds it), this attempt is a CredentialError.
        """
        try:
            async with asyncio.timeout_at(deadline):
                return await self._credentials.get()
        except TimeoutError:
            raise ApiError(
                code=CREDENTIAL_ERROR, message=f"{action}: no credential in the attempt's time", action=action
            ) from None

    async def _attempt(self, action: str, url: yarl.URL, query: str, deadline: float) -> Any:
        """One signed HTTP attempt, the credential included, ending by ``deadline`` (loop time); returns
        the decoded JSON of a 2xx answer or raises :class:`ApiError`."""
        cred = await self._credential(action, deadline)
        headers = self._headers(
            action, query, cred.access_key_id, cred.access_key_secret, cred.security_token
        )
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:  # aiohttp reads a zero total as "no limit"
            raise ApiError(
                code=TIMEOUT, message=f"{action}: no time left after the credential", action=action
            )
        limits = aiohttp.ClientTimeout(total=left, connect=min(left, self._timeout.connect or left))
        session = self._get_session()
        try:
            async with session.post(
                url, headers=headers, allow_redirects=False, proxy=self._proxy, timeout=limits
            ) as resp:
                status = resp.status
                body = await read_body(action, resp, self._api.max_response_bytes)
                if 200 <= status < 300:
                    try:
                        return decode_json(body)
                    except ValueError:
                        raise ApiError(
                            code=INVALID_RESPONSE,
                            message=f"{action}: HTTP {status} with a body that is not JSON",
                            http_status=status,
                            request_id=gated_request_id(resp.headers.get("x-acs-request-id")),
                            action=action,
                        ) from None
                error = error_from_response(action, status, body, resp.headers)
                if error.code in REFUSED_CREDENTIAL_CODES and self._refusable is not None:
                    self._refusable.refused(cred)  # never signed with again: the next attempt fetches anew
                raise error
        except ApiError:
            raise
        except TimeoutError:
            raise ApiError(
                code=TIMEOUT,
                message=f"{action}: no answer within {limits.total:g}s",
                action=action,
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise ApiError(
                code=INVALID_RESPONSE,
                message=f"{action}: truncated response ({describe(exc)})",
                action=action,
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: aiohttp refusing a header
            raise ApiError(
                code=CONNECTION_ERROR, message=f"{action}: {describe(exc)}", action=action
            ) from None
