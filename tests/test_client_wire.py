"""EhpcClient against a raw loopback HTTP server: the exact request bytes, and hostile or broken answers."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from exporter.config import ApiConfig, RetryConfig
from exporter.credentials import Credential, StaticCredentialSource
from exporter.errors import ApiError
from exporter.openapi.answers import error_from_response
from exporter.openapi.client import EhpcClient, resolve_endpoint
from exporter.openapi.signing import AUTHORIZATION_RE, EMPTY_SHA256, sign

AK, SK, TOKEN = "wire-ak", "wire-secret-value", "CAISwire-sts-token-0123"
OK_IMAGE = {
    "RequestId": "R1",
    "Success": True,
    "Image": {"ImageType": "VM", "Name": "n", "Status": "Available"},
}


def http_response(
    status: int, body: bytes, headers: dict[str, str] | None = None, *, length: int | None = None
) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection."""
    reason = {200: "OK", 302: "Found", 400: "Bad Request", 502: "Bad Gateway", 503: "Service Unavailable"}
    lines = [f"HTTP/1.1 {status} {reason.get(status, 'X')}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    return http_response(
        status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


@dataclass
class Request:
    """One request as received: the request line, the headers in order, the body."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def header_map(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers}

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]


@dataclass
class RawServer:
    """Answers each request with ``respond(request)`` (raw bytes) and closes; keeps what it received."""

    respond: Callable[[Request], bytes] = lambda _r: json_response(OK_IMAGE)
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *raw_headers = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            headers = [(h.split(":", 1)[0], h.split(":", 1)[1].strip()) for h in raw_headers]
            length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            request = Request(line, headers, body)
            self.requests.append(request)
            writer.write(self.respond(request))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server


def client_for(server: RawServer, token: str | None = None, **api: Any) -> EhpcClient:
    config = ApiConfig(
        endpoint=server.endpoint,
        protocol="http",
        qps=0,
        timeout_seconds=2,
        retry=api.pop("retry", RetryConfig(max_attempts=1)),
        **api,
    )
    return EhpcClient(config, StaticCredentialSource(Credential(AK, SK, token)))


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_request_bytes_on_the_wire(raw_server: RawServer, token: str | None) -> None:
    async with client_for(raw_server, token) as client:
        image = await client.get_image(
            "m-1*x y",
            image_type="VM",
            image_category="Custom",
            additional_region_ids=["cn-beijing", "cn-shanghai"],
        )
    assert image.image_id == "m-1*x y"  # the requested id, whatever the body says
    [req] = raw_server.requests
    query = (
        "AdditionalRegionIds=%5B%22cn-beijing%22%2C%22cn-shanghai%22%5D"
        "&ImageCategory=Custom&ImageId=m-1%2Ax%20y&ImageType=VM"
    )
    assert req.line == f"POST /?{query} HTTP/1.1"
    assert req.body == b""
    h = req.header_map
    expected_names = {
        "host", "accept", "user-agent", "x-acs-action", "x-acs-version", "x-acs-date",
        "x-acs-signature-nonce", "x-acs-content-sha256", "authorization", "content-length",
    }  # fmt: skip
    if token:
        expected_names |= {"x-acs-accesskey-id", "x-acs-security-token"}
        assert h["x-acs-security-token"] == TOKEN
        assert h["x-acs-accesskey-id"] == AK
    assert set(h) == expected_names  # nothing else: no Content-Type, no Accept-Encoding
    assert len(req.headers) == len(expected_names)
    assert h["host"] == raw_server.endpoint  # non-default port included
    assert h["content-length"] == "0"
    assert h["accept"] == "application/json"
    assert h["x-acs-action"] == "GetImage"
    assert h["x-acs-version"] == "2023-07-01"
    assert h["x-acs-content-sha256"] == EMPTY_SHA256
    assert re.fullmatch(r"ehpc-image-exporter/\S+ Python/\S+ aiohttp/\S+", h["user-agent"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", h["x-acs-date"])
    assert re.fullmatch(r"[0-9a-f]{32}", h["x-acs-signature-nonce"])
    m = AUTHORIZATION_RE.match(h["authorization"])
    assert m is not None
    assert m.group(1) == AK
    assert set(m.group(2).split(";")) == expected_names - {"authorization", "content-length"}
    # Re-sign what arrived (decoded nothing: the raw query is the canonical query) and compare.
    signed = {k: v for k, v in h.items() if k in m.group(2).split(";")}
    again = sign(method="POST", query=query, headers=signed, body=b"", access_key_id=AK, access_key_secret=SK)
    assert again["authorization"] == h["authorization"]
    assert SK not in str(req.headers)


async def test_prepared_requests_are_per_image(raw_server: RawServer) -> None:
    async with client_for(raw_server) as client:
        for image, regions in [("m-a", ()), ("m-b", ()), ("m-a", ("cn-beijing",)), ("m-a", ())]:
            await client.get_image(image, additional_region_ids=regions)
    assert [r.target for r in raw_server.requests] == [
        "/?ImageId=m-a",
        "/?ImageId=m-b",
        "/?AdditionalRegionIds=%5B%22cn-beijing%22%5D&ImageId=m-a",
        "/?ImageId=m-a",
    ]


async def test_each_attempt_has_a_fresh_nonce(raw_server: RawServer) -> None:
    raw_server.respond = lambda _r: json_response({"Code": "ServiceUnavailable", "RequestId": "R"}, 503)
    async with client_for(raw_server, retry=RetryConfig(3, 0.001, 0.002, 5)) as client:
        with pytest.raises(ApiError, match="ServiceUnavailable"):
            await client.get_image("m-1")
    nonces = {r.header_map["x-acs-signature-nonce"] for r in raw_server.requests}
    assert len(raw_server.requests) == 3
    assert len(nonces) == 3


async def test_error_body_fields_and_retry_after(raw_server: RawServer) -> None:
    msg = (
        "Specified signature is not matched with our calculation. "
        "server string to sign is:ACS3-HMAC-SHA256\nabc"
    )
    raw_server.respond = lambda _r: json_response(
        {"RequestId": "RID-1", "Code": "SignatureDoesNotMatch", "Message": msg},
        400,
        {"x-acs-retry-after": "1500"},
    )
    async with client_for(raw_server) as client:
        with pytest.raises(ApiError) as info:
            await client.list_images()
    err = info.value
    assert err.code == "SignatureDoesNotMatch"
    assert err.http_status == 400
    assert err.message == "Specified signature is not matched with our calculation."
    assert err.request_id == "RID-1"
    assert err.retry_after == 1.5
    assert err.action == "ListImages"


def test_error_from_response_edge_cases() -> None:
    html = error_from_response("GetImage", 502, b"<html>bad gateway</html>", {"x-acs-request-id": "H1"})
    assert (html.code, html.http_status, html.request_id, html.retryable) == (
        "InvalidResponse",
        502,
        "H1",
        True,
    )
    no_code = error_from_response("GetImage", 400, b'{"Message":"x"}', {})
    assert no_code.code == "InvalidResponse"
    long = error_from_response("GetImage", 400, json.dumps({"Code": "X", "Message": "m" * 1000}).encode(), {})
    assert len(long.message) <= 300
    for bad in ("0", "-5", "soon", ""):
        assert (
            error_from_response(
                "GetImage", 400, b'{"Code":"Throttling"}', {"x-acs-retry-after": bad}
            ).retry_after
            is None
        )


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (lambda _r: http_response(200, b'{"RequestId":"R","Image":{"Ima', length=500), "truncated"),
        (
            lambda _r: http_response(502, b"<html>bad gateway</html>", {"Content-Type": "text/html"}),
            "HTTP 502",
        ),
        (lambda _r: http_response(200, b"not json at all"), "not JSON"),
        (lambda _r: json_response({"Success": True, "Image": {"ImageType": 7}}), "Image.ImageType"),
        (lambda _r: http_response(302, b"", {"Location": "http://127.0.0.1:1/"}), "HTTP 302"),
    ],
    ids=["truncated", "html-error", "not-json", "wrong-shape", "redirect-not-followed"],
)
async def test_broken_answers_are_invalid_response(
    raw_server: RawServer, respond: Callable[[Request], bytes], message: str
) -> None:
    raw_server.respond = respond
    async with client_for(raw_server) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image("m-1")
    assert info.value.code == "InvalidResponse"
    assert message in str(info.value)
    assert len(raw_server.requests) == 1


def chunked(payload: bytes, size: int) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[i : i + size]), payload[i : i + size])
        for i in range(0, len(payload), size)
    )
    return head + chunks + b"0\r\n\r\n"


async def test_size_cap_on_chunked_bodies(raw_server: RawServer) -> None:
    body = json.dumps({**OK_IMAGE, "Padding": "x" * 5000}).encode()
    raw_server.respond = lambda _r: chunked(body, 700)
    async with client_for(raw_server, max_response_bytes=len(body)) as client:
        assert (await client.get_image("m-1")).name == "n"  # exactly at the cap: fine
    async with client_for(raw_server, max_response_bytes=len(body) - 1) as client:
        with pytest.raises(ApiError, match="too large"):
            await client.get_image("m-1")


def list_page(page: int, size: int, total: int, ids: list[str]) -> dict[str, Any]:
    return {
        "RequestId": f"P{page}",
        "Success": True,
        "TotalCount": total,
        "PageNumber": page,
        "PageSize": size,
        "Images": [{"ImageId": i, "ImageType": "VM", "Name": i} for i in ids],
    }


def page_of(req: Request) -> int:
    m = re.search(r"PageNumber=(\d+)", req.target)
    assert m is not None
    return int(m.group(1))


async def test_list_images_server_capping_page_size(raw_server: RawServer) -> None:
    """Asked for 50 a page, the server gives 2 (and says so): paging follows the server's PageSize."""
    ids = [f"m-{i}" for i in range(5)]
    raw_server.respond = lambda r: json_response(
        list_page(page_of(r), 2, 5, ids[(page_of(r) - 1) * 2 : page_of(r) * 2])
    )
    async with client_for(raw_server) as client:
        listed = await client.list_images(page_size=50, mode="Merge", image_names=["a", "b"])
    assert [i.image_id for i in listed] == ids
    assert [page_of(r) for r in raw_server.requests] == [1, 2, 3]
    assert "ImageNames=%5B%22a%22%2C%22b%22%5D" in raw_server.requests[0].target
    assert "Mode=Merge" in raw_server.requests[0].target


async def test_list_images_stops_on_empty_page(raw_server: RawServer) -> None:
    raw_server.respond = lambda r: json_response(
        list_page(page_of(r), 2, 100, ["a", "b"] if page_of(r) == 1 else [])
    )
    async with client_for(raw_server) as client:
        assert [i.image_id for i in await client.list_images(page_size=2)] == ["a", "b"]
    assert len(raw_server.requests) == 2


async def test_list_images_server_repeating_a_page(raw_server: RawServer) -> None:
    raw_server.respond = lambda r: json_response(list_page(1, 2, 1000, ["a", "b"]))  # ignores PageNumber
    async with client_for(raw_server) as client:
        with pytest.raises(ApiError, match="repeats"):
            await client.list_images(page_size=2)
    assert len(raw_server.requests) == 2


async def test_list_images_server_whose_total_keeps_growing(raw_server: RawServer) -> None:
    def respond(r: Request) -> bytes:
        n = page_of(r)
        return json_response(list_page(n, 2, 4 + 2 * n, [f"m-{n}a", f"m-{n}b"]))  # always one more page

    raw_server.respond = respond
    async with client_for(raw_server) as client:
        with pytest.raises(ApiError, match="did not end"):
            await client.list_images(page_size=2)
    assert len(raw_server.requests) == 4  # ceil(6 / 2) + 1 pages, then it stops


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        (ApiConfig(), ("https", "ehpcinstant.cn-hangzhou.aliyuncs.com")),
        (
            ApiConfig(region_id="ap-southeast-1", network="vpc"),
            ("https", "ehpcinstant-vpc.ap-southeast-1.aliyuncs.com"),
        ),
        (ApiConfig(endpoint="127.0.0.1:9766", protocol="http"), ("http", "127.0.0.1:9766")),
        (ApiConfig(endpoint="http://127.0.0.1:9766/"), ("http", "127.0.0.1:9766")),
        (ApiConfig(endpoint="https://Example.com:443"), ("https", "example.com")),
        (ApiConfig(endpoint="https://[::1]:8443"), ("https", "[::1]:8443")),
        (
            ApiConfig(endpoint="ehpcinstant.cn-beijing.aliyuncs.com"),
            ("https", "ehpcinstant.cn-beijing.aliyuncs.com"),
        ),
    ],
)
def test_resolve_endpoint(api: ApiConfig, expected: tuple[str, str]) -> None:
    assert resolve_endpoint(api) == expected


@pytest.mark.parametrize(
    "endpoint", ["ftp://h", "http://u:p@h", "https://h/path", "http://h/?a=1", "http://"]
)
def test_resolve_endpoint_rejects(endpoint: str) -> None:
    with pytest.raises(ValueError, match=r"api\.endpoint"):
        resolve_endpoint(ApiConfig(endpoint=endpoint))


async def test_session_is_pooled_and_closed(raw_server: RawServer) -> None:
    client = client_for(raw_server)
    await client.get_image("m-1")
    session = client._session
    await client.get_image("m-1")
    assert client._session is session  # one pooled session per client
    await client.close()
    assert session is not None
    assert session.closed


async def test_proxy_from_the_environment(raw_server: RawServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY is honoured (resolved once per session, not per request); NO_PROXY bypasses it."""
    monkeypatch.setenv("HTTP_PROXY", f"http://{raw_server.endpoint}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    config = ApiConfig(endpoint="ehpcinstant.example.invalid", protocol="http", qps=0, timeout_seconds=2)
    async with EhpcClient(config, StaticCredentialSource(Credential(AK, SK))) as client:
        await client.get_image("m-1")
    [req] = raw_server.requests
    assert req.line == "POST http://ehpcinstant.example.invalid/?ImageId=m-1 HTTP/1.1"  # absolute form
    assert req.header_map["host"] == "ehpcinstant.example.invalid"

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = ApiConfig(
        endpoint="127.0.0.1:9", protocol="http", qps=0, timeout_seconds=2, retry=RetryConfig(1)
    )
    async with EhpcClient(direct, StaticCredentialSource(Credential(AK, SK))) as client:
        with pytest.raises(ApiError, match="ConnectionError"):
            await client.get_image("m-1")
    assert len(raw_server.requests) == 1  # went direct (and found nothing on port 9), not via the proxy


class Recorder:
    """An ApiObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, str | None]] = []
        self.failures: list[tuple[str, str]] = []

    def on_attempt(self, action: str, duration_seconds: float, error: ApiError | None) -> None:
        self.attempts.append((action, error.code if error else None))

    def on_failure(self, action: str, error: ApiError) -> None:
        self.failures.append((action, error.code))


def observed_client(server: RawServer, observer: Recorder) -> EhpcClient:
    config = ApiConfig(
        endpoint=server.endpoint, protocol="http", qps=0, timeout_seconds=2, retry=RetryConfig(max_attempts=1)
    )
    return EhpcClient(config, StaticCredentialSource(Credential(AK, SK, None)), observer=observer)


@pytest.mark.parametrize("cycle", [2, 3, 5], ids=lambda n: f"cycle-of-{n}")
async def test_list_images_paging_that_cycles_is_caught_and_counted(
    raw_server: RawServer, cycle: int
) -> None:
    """Pages A, B, ..., A, B, ... with a huge TotalCount: the first page that repeats ends the listing."""
    raw_server.respond = lambda r: json_response(
        list_page(page_of(r), 2, 10**9, [f"m-{page_of(r) % cycle}a", f"m-{page_of(r) % cycle}b"])
    )
    observer = Recorder()
    async with observed_client(raw_server, observer) as client:
        with pytest.raises(ApiError, match="repeats images of an earlier page"):
            await client.list_images(page_size=2)
    assert len(raw_server.requests) == cycle + 1
    assert observer.failures == [("ListImages", "InvalidResponse")]


async def test_list_images_page_budget(raw_server: RawServer) -> None:
    """Fresh images on every page forever: the page budget ends it, however large TotalCount claims."""
    raw_server.respond = lambda r: json_response(list_page(page_of(r), 2, 10**9, [f"m-{page_of(r)}"] * 1))
    observer = Recorder()
    async with observed_client(raw_server, observer) as client:
        with pytest.raises(ApiError, match="did not end after 7 pages"):
            await client.list_images(page_size=2, max_pages=7)
    assert len(raw_server.requests) == 7
    assert observer.failures == [("ListImages", "InvalidResponse")]


@pytest.mark.parametrize(
    "body",
    [b"[" * 200_000, b'{"Image":' * 100_000, b'{"Image": {"Size": 1' + b"0" * 5000 + b"}}"],
    ids=["deep-array", "deep-object", "huge-int"],
)
async def test_answers_the_parser_cannot_hold_are_counted(raw_server: RawServer, body: bytes) -> None:
    """Nesting past the parser's stack or absurd numbers: one counted InvalidResponse, no other exception."""
    raw_server.respond = lambda _r: http_response(200, body)
    observer = Recorder()
    async with observed_client(raw_server, observer) as client:
        with pytest.raises(ApiError) as info:
            await client.get_image("m-1")
    assert info.value.code == "InvalidResponse"
    assert observer.attempts == [("GetImage", "InvalidResponse")]
