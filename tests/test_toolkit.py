"""Tests for exporter.http.toolkit: real TLS connections on loopback, real bcrypt, real aiohttp server."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import structlog
import trustme
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.http.toolkit import REALM, WebConfigError, WebSecurity, load_web_security

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
PASSWORD = "correct horse battery staple"
# htpasswd writes $2y$; cost 4 keeps each check near a millisecond. A fixed salt: the hash appears in
# parametrized test ids, which every pytest-xdist worker must collect alike.
HASH = "$2y$" + bcrypt.hashpw(PASSWORD.encode(), b"$2b$04$ehpcimageexportertestu").decode()[4:]
FAMILIES = settings(
    max_examples=40,
    deadline=None,  # nothing here is timed: the machine is shared
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Failures a refused TLS client can see, depending on where in the handshake the server gives up.
REFUSED = (aiohttp.ClientError, ssl.SSLError, ConnectionError)


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The CA that signs the server's certificates."""
    return trustme.CA()


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    """A separate CA for client certificates (mTLS)."""
    return trustme.CA()


def write_leaf(leaf: trustme.LeafCert, directory: Path, stem: str = "server") -> tuple[Path, Path]:
    """Write a leaf's certificate and key atomically (new inode, as a Kubernetes secret update does)."""
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    for target, blob in ((cert, leaf.cert_chain_pems[0]), (key, leaf.private_key_pem)):
        tmp = target.with_suffix(".tmp")
        blob.write_to_path(str(tmp))
        os.replace(tmp, target)
    return cert, key


def write_config(directory: Path, document: dict[str, Any]) -> str:
    """A web config file in ``directory`` (so relative paths resolve against it)."""
    path = directory / "web-config.yml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def der(leaf: trustme.LeafCert) -> bytes:
    """The DER bytes of a leaf certificate, as ``getpeercert(binary_form=True)`` returns them."""
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None, **attrs: Any) -> ssl.SSLContext:
    """A client context trusting ``ca``, optionally presenting ``cert``, with extra attributes set."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    for name, value in attrs.items():
        setattr(ctx, name, value)
    return ctx


async def handle_ok(_request: web.Request) -> web.Response:
    """The protected resource."""
    return web.Response(text="metrics\n")


@asynccontextmanager
async def serve(security: WebSecurity) -> AsyncIterator[str]:
    """Serve a tiny app behind the security middleware on 127.0.0.1; yield the base URL."""
    app = web.Application(middlewares=[security.middleware(OPEN_PATHS)])
    app.router.add_get("/metrics", handle_ok)
    app.router.add_get("/healthz", handle_ok)
    app.router.add_get("/readyz", handle_ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=security.ssl_context())
    await site.start()
    try:
        port = runner.addresses[0][1]
        scheme = "https" if security.tls_enabled else "http"
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(
    url: str, ctx: ssl.SSLContext | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """GET ``url``: (status, headers, body)."""
    connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False, force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()


async def peer_certificate(url: str, ctx: ssl.SSLContext) -> bytes:
    """The DER certificate a fresh TLS connection to ``url`` is served."""
    port = int(url.rsplit(":", 1)[1])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True)
        assert cert is not None
        return bytes(cert)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
def tls_dir(tmp_path: Path, ca: trustme.CA) -> Path:
    """tmp_path holding server.crt/server.key for 127.0.0.1."""
    write_leaf(ca.issue_cert("127.0.0.1", "localhost"), tmp_path)
    return tmp_path


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header for basic auth."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --------------------------------------------------------------------------------------------- TLS


async def test_https_serves_the_configured_certificate(tls_dir: Path, ca: trustme.CA) -> None:
    """The server presents cert_file and answers over HTTPS; relative paths resolve next to the file."""
    leaf = ca.issue_cert("127.0.0.1")
    write_leaf(leaf, tls_dir)
    security = load_web_security(
        write_config(tls_dir, {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}})
    )
    assert security.tls_enabled
    assert not security.basic_auth_enabled
    async with serve(security) as url:
        assert await peer_certificate(url, client_context(ca)) == der(leaf)
        status, _, body = await get(f"{url}/metrics", client_context(ca))
        assert (status, body) == (200, "metrics\n")


async def test_plain_http_to_the_tls_port_fails(tls_dir: Path) -> None:
    """A plaintext request never reaches the handler of a TLS listener."""
    security = load_web_security(
        write_config(tls_dir, {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}})
    )
    async with serve(security) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(url.replace("https://", "http://") + "/metrics")


async def test_min_version_tls13_refuses_a_tls12_only_client(tls_dir: Path, ca: trustme.CA) -> None:
    """min_version TLS13 rejects a client capped at TLS 1.2 and accepts a TLS 1.3 one."""
    security = load_web_security(
        write_config(
            tls_dir,
            {
                "tls_server_config": {
                    "cert_file": "server.crt",
                    "key_file": "server.key",
                    "min_version": "TLS13",
                }
            },
        )
    )
    async with serve(security) as url:
        with pytest.raises(REFUSED):
            await get(f"{url}/metrics", client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2))
        status, _, _ = await get(f"{url}/metrics", client_context(ca))
        assert status == 200


async def test_cipher_suites_and_curve_are_applied(tls_dir: Path, ca: trustme.CA) -> None:
    """A Go cipher name maps to its OpenSSL suite; a one-curve preference excludes other curves."""
    security = load_web_security(
        write_config(
            tls_dir,
            {
                "tls_server_config": {
                    "cert_file": "server.crt",
                    "key_file": "server.key",
                    "max_version": "TLS12",
                    "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
                    "curve_preferences": ["X25519"],
                }
            },
        )
    )
    async with serve(security) as url:
        port = int(url.rsplit(":", 1)[1])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca))
        cipher = writer.get_extra_info("ssl_object").cipher()
        writer.close()
        await writer.wait_closed()
        assert cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
        assert cipher[1] == "TLSv1.2"
        p256_only = client_context(ca)
        p256_only.set_ecdh_curve("prime256v1")
        with pytest.raises(REFUSED):
            await get(f"{url}/metrics", p256_only)


async def test_prefer_server_cipher_suites_false_clears_the_option(tls_dir: Path) -> None:
    """prefer_server_cipher_suites maps to OP_CIPHER_SERVER_PREFERENCE both ways."""
    tls = {"cert_file": "server.crt", "key_file": "server.key"}
    on = load_web_security(write_config(tls_dir, {"tls_server_config": tls})).ssl_context()
    off = load_web_security(
        write_config(tls_dir, {"tls_server_config": {**tls, "prefer_server_cipher_suites": False}})
    ).ssl_context()
    assert on is not None
    assert off is not None
    assert on.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert not off.options & ssl.OP_CIPHER_SERVER_PREFERENCE


async def test_inline_cert_key_and_client_ca(tmp_path: Path, ca: trustme.CA, client_ca: trustme.CA) -> None:
    """cert, key and client_ca can be given inline instead of as files."""
    leaf = ca.issue_cert("127.0.0.1")
    security = load_web_security(
        write_config(
            tmp_path,
            {
                "tls_server_config": {
                    "cert": leaf.cert_chain_pems[0].bytes().decode(),
                    "key": leaf.private_key_pem.bytes().decode(),
                    "client_ca": client_ca.cert_pem.bytes().decode(),
                    "client_auth_type": "RequireAndVerifyClientCert",
                }
            },
        )
    )
    assert "PRIVATE KEY" not in repr(security.tls)
    client = client_ca.issue_cert("scraper.example")
    async with serve(security) as url:
        assert await peer_certificate(url, client_context(ca, client)) == der(leaf)
        with pytest.raises(REFUSED):
            await get(f"{url}/metrics", client_context(ca))


# --------------------------------------------------------------------------------------------- mTLS


def mtls_config(directory: Path, client_ca: trustme.CA, auth_type: str, **extra: Any) -> str:
    """A web config requiring client certificates signed by ``client_ca``."""
    client_ca.cert_pem.write_to_path(str(directory / "clients-ca.crt"))
    tls = {
        "cert_file": "server.crt",
        "key_file": "server.key",
        "client_ca_file": "clients-ca.crt",
        "client_auth_type": auth_type,
        **extra,
    }
    return write_config(directory, {"tls_server_config": tls})


async def test_mtls_required(tls_dir: Path, ca: trustme.CA, client_ca: trustme.CA) -> None:
    """RequireAndVerifyClientCert: no cert or a cert from another CA is refused; a signed cert is served.

    Open paths are no exception: the handshake happens before any path is known.
    """
    security = load_web_security(mtls_config(tls_dir, client_ca, "RequireAndVerifyClientCert"))
    good = client_ca.issue_cert("scraper.example")
    rogue = trustme.CA().issue_cert("scraper.example")
    async with serve(security) as url:
        status, _, _ = await get(f"{url}/metrics", client_context(ca, good))
        assert status == 200
        for ctx in (client_context(ca), client_context(ca, rogue)):
            for path in ("/metrics", "/healthz"):
                with pytest.raises(REFUSED):
                    await get(url + path, ctx)


async def test_mtls_verify_if_given(tls_dir: Path, ca: trustme.CA, client_ca: trustme.CA) -> None:
    """VerifyClientCertIfGiven: no cert is served, a signed cert is served, a cert from another CA is not."""
    security = load_web_security(mtls_config(tls_dir, client_ca, "VerifyClientCertIfGiven"))
    async with serve(security) as url:
        assert (await get(f"{url}/metrics", client_context(ca)))[0] == 200
        assert (await get(f"{url}/metrics", client_context(ca, client_ca.issue_cert("a.example"))))[0] == 200
        with pytest.raises(REFUSED):
            await get(f"{url}/metrics", client_context(ca, trustme.CA().issue_cert("a.example")))


async def test_client_allowed_sans(tls_dir: Path, ca: trustme.CA, client_ca: trustme.CA) -> None:
    """Only client certificates carrying an allowed SAN (DNS or IP, any spelling of the IP) get through."""
    security = load_web_security(
        mtls_config(
            tls_dir,
            client_ca,
            "RequireAndVerifyClientCert",
            client_allowed_sans=["prometheus.example", "2001:db8::1"],
        )
    )
    async with serve(security) as url:
        for allowed in ("prometheus.example", "2001:db8:0::1"):
            status, _, _ = await get(f"{url}/metrics", client_context(ca, client_ca.issue_cert(allowed)))
            assert status == 200, allowed
        status, _, _ = await get(f"{url}/healthz", client_context(ca, client_ca.issue_cert("other.example")))
        assert status == 403


# --------------------------------------------------------------------------------------------- rotation


async def test_certificate_rotation_is_picked_up_without_restart(tls_dir: Path, ca: trustme.CA) -> None:
    """New connections see a rotated certificate; a broken one keeps the old context and logs an error."""
    first, second, third = (ca.issue_cert("127.0.0.1") for _ in range(3))
    write_leaf(first, tls_dir)
    security = load_web_security(
        write_config(tls_dir, {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}),
        reload_interval_seconds=0,
    )
    ctx = client_context(ca)
    async with serve(security) as url:
        assert await peer_certificate(url, ctx) == der(first)

        write_leaf(second, tls_dir)
        assert await peer_certificate(url, ctx) == der(second)
        assert (await get(f"{url}/metrics", ctx))[0] == 200

        # A certificate that does not match the key: refused, logged, the previous context stays.
        (tls_dir / "server.tmp").write_bytes(third.cert_chain_pems[0].bytes())
        os.replace(tls_dir / "server.tmp", tls_dir / "server.crt")
        with structlog.testing.capture_logs() as logs:
            assert await peer_certificate(url, ctx) == der(second)
            assert await peer_certificate(url, ctx) == der(second)
        failures = [e for e in logs if e["event"] == "tls_reload_failed"]
        assert len(failures) == 1, logs  # reported once per change, not per handshake
        assert failures[0]["log_level"] == "error"
        assert "cert_file" in failures[0]["error"]

        write_leaf(third, tls_dir)
        assert await peer_certificate(url, ctx) == der(third)


async def test_client_ca_rotation_is_picked_up(tls_dir: Path, ca: trustme.CA, client_ca: trustme.CA) -> None:
    """Replacing client_ca_file switches which client certificates verify, without a restart."""
    security = load_web_security(
        mtls_config(tls_dir, client_ca, "RequireAndVerifyClientCert"), reload_interval_seconds=0
    )
    new_ca = trustme.CA()
    old_client = client_context(ca, client_ca.issue_cert("a.example"))
    new_client = client_context(ca, new_ca.issue_cert("a.example"))
    async with serve(security) as url:
        assert (await get(f"{url}/metrics", old_client))[0] == 200
        new_ca.cert_pem.write_to_path(str(tls_dir / "ca.tmp"))
        os.replace(tls_dir / "ca.tmp", tls_dir / "clients-ca.crt")
        assert (await get(f"{url}/metrics", new_client))[0] == 200
        with pytest.raises(REFUSED):
            await get(f"{url}/metrics", old_client)


async def test_reload_is_throttled(tls_dir: Path, ca: trustme.CA) -> None:
    """Within the reload interval the files are not looked at again (handshakes stay cheap)."""
    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    write_leaf(first, tls_dir)
    security = load_web_security(
        write_config(tls_dir, {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}),
        reload_interval_seconds=3600,
    )
    async with serve(security) as url:
        write_leaf(second, tls_dir)
        assert await peer_certificate(url, client_context(ca)) == der(first)


# --------------------------------------------------------------------------------------------- basic auth


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Spy on bcrypt.checkpw (the real one still runs): the hashes it was asked to check against."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    return calls


@pytest.fixture
async def auth_url(tmp_path: Path) -> AsyncIterator[str]:
    """A plain-HTTP server with basic auth for user ``prometheus`` and two extra headers."""
    security = load_web_security(
        write_config(
            tmp_path,
            {
                "basic_auth_users": {"prometheus": HASH},
                "http_server_config": {
                    "headers": {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}
                },
            },
        )
    )
    assert security.users == frozenset({"prometheus"})
    assert HASH not in repr(security)
    async with serve(security) as url:
        yield url


async def test_basic_auth_right_password(auth_url: str, checkpw_calls: list[bytes]) -> None:
    """The right password is served; the second scrape is served from the cache without bcrypt."""
    for _ in range(3):
        status, headers, body = await get(f"{auth_url}/metrics", headers=basic("prometheus", PASSWORD))
        assert (status, body) == (200, "metrics\n")
        assert headers["X-Frame-Options"] == "deny"
    assert checkpw_calls == [HASH.encode()]


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param(basic("prometheus", "wrong")["Authorization"], id="wrong-password"),
        pytest.param(basic("nobody", PASSWORD)["Authorization"], id="unknown-user"),
        pytest.param("Basic !!!not-base64!!!", id="bad-base64"),
        pytest.param("Basic " + base64.b64encode(b"no-colon-here").decode(), id="no-colon"),
        pytest.param("Basic " + base64.b64encode(b"\xffprom:\xfe").decode(), id="not-utf8"),
        pytest.param("Basic", id="no-token"),
        pytest.param("Bearer abc", id="other-scheme"),
        pytest.param(basic("prometheus", PASSWORD + "x" * 80)["Authorization"], id="over-72-bytes"),
    ],
)
async def test_basic_auth_refusals(auth_url: str, authorization: str | None) -> None:
    """Missing, wrong and malformed credentials all answer 401 with the realm, never 500."""
    headers = {} if authorization is None else {"Authorization": authorization}
    status, resp_headers, _ = await get(f"{auth_url}/metrics", headers=headers)
    assert status == 401
    assert resp_headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
    assert resp_headers["X-Content-Type-Options"] == "nosniff"


async def test_unknown_user_still_runs_bcrypt(auth_url: str, checkpw_calls: list[bytes]) -> None:
    """Unknown users cost a bcrypt check at the configured cost (no user enumeration by timing).

    Failures are never cached: each wrong attempt pays bcrypt again.
    """
    for _ in range(2):
        assert (await get(f"{auth_url}/metrics", headers=basic("nobody", PASSWORD)))[0] == 401
        assert (await get(f"{auth_url}/metrics", headers=basic("prometheus", "wrong")))[0] == 401
    assert len(checkpw_calls) == 4
    dummy = checkpw_calls[0]
    assert dummy != HASH.encode()
    assert dummy[4:7] == HASH.encode()[4:7]  # same cost
    assert checkpw_calls[1] == HASH.encode()


async def test_concurrent_first_scrapes_share_one_bcrypt(auth_url: str, checkpw_calls: list[bytes]) -> None:
    """Scrapes arriving together with the same good credentials pay bcrypt once, not once each."""
    results = await asyncio.gather(
        *(get(f"{auth_url}/metrics", headers=basic("prometheus", PASSWORD)) for _ in range(5))
    )
    assert [status for status, _, _ in results] == [200] * 5
    assert checkpw_calls == [HASH.encode()]


async def test_open_paths_need_no_auth(auth_url: str) -> None:
    """/healthz and /readyz stay open; anything else, unknown paths included, needs credentials."""
    for path in ("/healthz", "/readyz"):
        status, headers, _ = await get(auth_url + path)
        assert status == 200
        assert headers["X-Frame-Options"] == "deny"
    assert (await get(f"{auth_url}/nope"))[0] == 401
    assert (await get(f"{auth_url}/healthz/"))[0] == 401
    status, headers, _ = await get(f"{auth_url}/nope", headers=basic("prometheus", PASSWORD))
    assert status == 404
    assert headers["X-Frame-Options"] == "deny"  # headers reach aiohttp's own error responses too


async def test_basic_auth_over_tls(tls_dir: Path, ca: trustme.CA) -> None:
    """TLS and basic auth combine."""
    config = {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
        "basic_auth_users": {"prometheus": HASH},
    }
    async with serve(load_web_security(write_config(tls_dir, config))) as url:
        assert (await get(f"{url}/metrics", client_context(ca)))[0] == 401
        assert (await get(f"{url}/metrics", client_context(ca), basic("prometheus", PASSWORD)))[0] == 200


async def test_rate_limit(tmp_path: Path) -> None:
    """rate_limit answers 429 past the burst; health probes are never throttled."""
    security = load_web_security(write_config(tmp_path, {"rate_limit": {"interval": "1h", "burst": 2}}))
    async with serve(security) as url:
        statuses = [(await get(f"{url}/metrics"))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert (await get(f"{url}/healthz"))[0] == 200


async def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    """An empty web config is valid and changes nothing."""
    path = tmp_path / "web.yml"
    path.write_text("")
    security = load_web_security(str(path))
    assert security.ssl_context() is None
    assert not security.basic_auth_enabled
    async with serve(security) as url:
        assert (await get(f"{url}/metrics"))[0] == 200


# --------------------------------------------------------------------------------------------- errors

SECRET_HASH = "$2y$10$secretsecretsecretsecretsecretsecretsecretsecretsecre"  # valid shape, fake


def _tls(**fields: Any) -> dict[str, Any]:
    return {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", **fields}}


ERROR_CASES: list[tuple[str, Callable[[Path], Any], str]] = [
    ("unknown-top-key", lambda d: {"tls_config": {}}, "tls_config"),
    ("unknown-tls-key", lambda d: _tls(certfile="x"), "tls_server_config.certfile"),
    ("missing-key-file", lambda d: {"tls_server_config": {"cert_file": "server.crt"}}, "key_file"),
    ("missing-cert-file", lambda d: _tls(cert_file="absent.crt"), "cert_file"),
    ("cert-is-a-directory", lambda d: _tls(cert_file="."), "cert_file"),
    ("cert-not-pem", lambda d: _tls(cert_file="web-config.yml"), "cert_file"),
    ("cert-and-key-mismatch", lambda d: _tls(key_file="other.key"), "cert_file"),
    ("inline-and-file-key", lambda d: _tls(key="-----BEGIN PRIVATE KEY-----\nsecretkeymaterial\n"), "key"),
    ("bad-client-auth-type", lambda d: _tls(client_auth_type="Always"), "client_auth_type"),
    ("unsupported-client-auth", lambda d: _tls(client_auth_type="RequireAnyClientCert"), "client_auth_type"),
    ("ca-without-auth-type", lambda d: _tls(client_ca_file="server.crt"), "client_auth_type"),
    ("auth-type-without-ca", lambda d: _tls(client_auth_type="RequireAndVerifyClientCert"), "client_ca_file"),
    ("sans-without-required", lambda d: _tls(client_allowed_sans=["a"]), "client_allowed_sans"),
    ("bad-min-version", lambda d: _tls(min_version="TLS14"), "min_version"),
    ("min-above-max", lambda d: _tls(min_version="TLS13", max_version="TLS12"), "min_version"),
    ("unknown-cipher", lambda d: _tls(cipher_suites=["TLS_RSA_WITH_RC4_128_SHA"]), "cipher_suites"),
    ("two-curves", lambda d: _tls(curve_preferences=["X25519", "CurveP256"]), "curve_preferences"),
    ("unknown-curve", lambda d: _tls(curve_preferences=["P256"]), "curve_preferences"),
    ("bad-hash", lambda d: {"basic_auth_users": {"alice": "secret-not-a-hash"}}, "basic_auth_users.alice"),
    ("hash-not-string", lambda d: {"basic_auth_users": {"alice": 12345678}}, "basic_auth_users.alice"),
    (
        "colon-in-user",
        lambda d: {"basic_auth_users": {"a:b": SECRET_HASH}},
        "basic_auth_users: user name 'a:b'",
    ),
    (
        "forbidden-header",
        lambda d: {"http_server_config": {"headers": {"Authorization": "x"}}},
        "Authorization",
    ),
    (
        "content-type-header",
        lambda d: {"http_server_config": {"headers": {"Content-Type": "x"}}},
        "Content-Type",
    ),
    (
        "bad-frame-options",
        lambda d: {"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
        "X-Frame",
    ),
    ("http2-not-bool", lambda d: {"http_server_config": {"http2": "yes please"}}, "http2"),
    ("bad-duration", lambda d: {"rate_limit": {"interval": "soon", "burst": 1}}, "rate_limit.interval"),
    ("zero-burst", lambda d: {"rate_limit": {"interval": "1s", "burst": 0}}, "rate_limit.burst"),
    ("not-a-mapping", lambda d: ["tls_server_config"], "mapping"),
]


@pytest.mark.parametrize(("make", "field"), [pytest.param(m, f, id=i) for i, m, f in ERROR_CASES])
def test_config_errors_are_one_line_and_leak_nothing(
    tls_dir: Path, ca: trustme.CA, make: Callable[[Path], Any], field: str
) -> None:
    """Each invalid file raises WebConfigError (a ValueError) naming file and field, without secrets."""
    write_leaf(ca.issue_cert("other"), tls_dir, stem="other")
    path = write_config(tls_dir, make(tls_dir))
    with pytest.raises(WebConfigError) as info:
        load_web_security(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert re.match(rf"{re.escape(path)}:\d+:\d+: ", message), message
    assert field in message
    for secret in ("secret", "PRIVATE KEY", "12345678", SECRET_HASH):
        assert secret not in message


def test_duplicate_user_is_an_error(tmp_path: Path) -> None:
    """A user listed twice is an error, not a silent override."""
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: '{SECRET_HASH}'\n  alice: '{SECRET_HASH}'\n")
    with pytest.raises(WebConfigError, match="duplicate key 'alice'") as info:
        load_web_security(str(path))
    assert "secret" not in str(info.value)


def test_invalid_yaml_does_not_echo_the_file(tmp_path: Path) -> None:
    """A YAML syntax error reports a position, not the offending text (which may be a hash)."""
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: {SECRET_HASH}: [\n")
    with pytest.raises(WebConfigError, match=rf"^{re.escape(str(path))}:2:\d+: invalid YAML: ") as info:
        load_web_security(str(path))
    assert "secret" not in str(info.value)


def test_the_config_files_gate_guards_the_web_config_too(tmp_path: Path) -> None:
    """Why: one gate for both files. An alias bomb is refused before it is built (a line, no hash), a
    huge integer is a type error, not a traceback, and an oversize file is refused by its size."""
    path = tmp_path / "web.yml"
    laughs = "".join(
        f"  {c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join([repr(SECRET_HASH)] * 9)}]\n"
        for p, c in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
    )
    path.write_text("x:\n" + laughs + "basic_auth_users: {alice: *i}\n")
    with pytest.raises(WebConfigError) as info:
        load_web_security(str(path))
    assert str(info.value) == f"{path}:7:6: x.f: expands to more than 100000 nodes (through aliases)"
    path.write_text(f"rate_limit: {{interval: 1s, burst: {'9' * 5000}}}\n")
    with pytest.raises(
        WebConfigError, match=r":1:\d+: rate_limit\.burst: number too large \(5000 characters\)"
    ):
        load_web_security(str(path))
    with path.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    with pytest.raises(WebConfigError, match="cannot read the web config file: larger than"):
        load_web_security(str(path))


def test_missing_file(tmp_path: Path) -> None:
    """A missing web config file is a WebConfigError naming it."""
    path = str(tmp_path / "absent.yml")
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_security(path)


@pytest.fixture
def no_memfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend os.memfd_create does not exist (macOS), to exercise the temporary-file fallback."""
    monkeypatch.delattr(os, "memfd_create", raising=False)


async def test_inline_key_without_memfd(tmp_path: Path, ca: trustme.CA, no_memfd: None) -> None:
    """Inline PEMs load through a private temporary file where memfd is unavailable."""
    leaf = ca.issue_cert("127.0.0.1")
    security = load_web_security(
        write_config(
            tmp_path,
            {
                "tls_server_config": {
                    "cert": leaf.cert_chain_pems[0].bytes().decode(),
                    "key": leaf.private_key_pem.bytes().decode(),
                }
            },
        )
    )
    async with serve(security) as url:
        assert await peer_certificate(url, client_context(ca)) == der(leaf)


def test_every_section_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Like the main config, a web config with several mistakes names them all, one line each."""
    path = write_config(
        tmp_path,
        {
            "tls_server_config": {"cert_file": "a.pem", "key_file": "a.key", "min_version": "TLS99"},
            "basic_auth_users": {"alice": "not-a-bcrypt-hash"},
            "rate_limit": {"interval": "soon", "burst": 1},
        },
    )
    with pytest.raises(WebConfigError) as err:
        load_web_security(path)
    lines = err.value.errors
    assert len(lines) == 3, lines
    assert all(re.match(rf"{re.escape(path)}:\d+:\d+: ", line) for line in lines), lines
    assert [line.split(": ")[1].split(".")[0] for line in lines] == [  # in file order (safe_dump sorts)
        "basic_auth_users",
        "rate_limit",
        "tls_server_config",
    ]
    assert "not-a-bcrypt-hash" not in str(err.value)


# --------------------------------------------------------------------------------------------- families
# Every key of the format x every family of bad value (wrong type, out of range, unknown key, bad file
# reference), each put alone into an otherwise valid file with TLS, mTLS, users, headers and a rate limit:
# exactly one line, at the key's line of the file, naming the field. Then several at once.

TLS, HTTP, RATE = "tls_server_config", "http_server_config", "rate_limit"
# Field -> kind. A kind decides which families of bad values apply.
KINDS: dict[tuple[str, ...], str] = {
    **{(TLS, k): "file" for k in ("cert_file", "key_file", "client_ca_file")},
    **{(TLS, k): "pem" for k in ("cert", "key", "client_ca")},
    **{(TLS, k): "choice" for k in ("client_auth_type", "min_version", "max_version")},
    **{(TLS, k): "list" for k in ("client_allowed_sans", "cipher_suites", "curve_preferences")},
    (TLS, "prefer_server_cipher_suites"): "bool",
    (HTTP, "http2"): "bool",
    **{(k,): "mapping" for k in (TLS, HTTP, "basic_auth_users", RATE)},
    (HTTP, "headers"): "mapping",
    (RATE, "interval"): "duration",
    (RATE, "burst"): "int",
}
WRONG_TYPES: dict[str, tuple[list[Any], str]] = {
    "string": ([5, 2.5, True, ["x"], {"x": 1}], "must be a string"),
    "bool": (["yes", 1, 2.5, ["x"], {"x": 1}], "must be true or false"),
    "list": (["x", 5, True, {"x": 1}], "must be a list"),
    "mapping": (["x", 5, True, ["x"]], "must be a mapping"),
    "int": (["10", 2.5, True, ["x"], {"x": 1}], "must be an integer"),
    "duration": ([5, True, 2.5, ["1s"], {"x": 1}], "must be a duration"),
}
PEM_WHAT = {"cert": "certificate", "key": "private key", "client_ca": "certificate"}


@dataclass(frozen=True)
class Bad:
    """One bad value at one key, and the line it must give: ``field: ...says...``, at ``at``'s line."""

    family: str
    key: tuple[str, ...]
    value: Any
    says: str
    field: str = ""  # the location the line names (default: the key)
    at: tuple[str | int, ...] = ()  # where line:column points (default: the field)
    also: tuple[tuple[str, Any], ...] = ()  # siblings set (or, with None, removed) with it
    field_level: bool = True  # False: a rule or a file, judged once the block's fields are valid

    @property
    def where(self) -> str:
        """The location the line names."""
        return self.field or ".".join(self.key)

    @property
    def points_at(self) -> tuple[str | int, ...]:
        """Keys and indexes of the node the line:column is."""
        if self.at:
            return self.at
        parts: list[str | int] = []
        for token in re.findall(r"[^.\[\]]+|\[\d+\]", self.where):
            parts.append(int(token[1:-1]) if token.startswith("[") else token)
        return tuple(parts)

    @property
    def id(self) -> str:
        """A readable test id."""
        return f"{'.'.join(self.key)}-{self.family}-{str(self.value)[:24]!r}"


def _out(key: tuple[str, ...], value: Any, says: str, sub: str = "", **kw: Any) -> Bad:
    """An out-of-range case; ``sub`` names the item or entry under ``key`` the line is about."""
    return Bad("out of range", key, value, says, field=".".join(key) + sub if sub else "", **kw)


def _rule(key: tuple[str, ...], value: Any, says: str, **kw: Any) -> Bad:
    """A value refused by a cross-field rule or a file check, judged once the block's fields are valid."""
    return Bad("out of range", key, value, says, field_level=False, **kw)


def _bad_values() -> list[Bad]:
    out: list[Bad] = []
    for key, kind in KINDS.items():
        values, says = WRONG_TYPES["string" if kind in ("file", "pem", "choice") else kind]
        out += [Bad("wrong type", key, v, says) for v in values]
    bidi = "control or bidi characters"
    for name, what in PEM_WHAT.items():
        file = (TLS, f"{name}_file")
        out += [_out(file, "x" * 4097, "must be at most 4096 characters")]
        out += [_out(file, v, bidi) for v in ("a\tb.crt", "a\u202eb.crt", "a\x00b")]
        out.append(_rule((TLS, name), "not a PEM", f"contains no PEM {what}", also=((file[1], None),)))
        # Bad file references: missing, a directory, a FIFO, a device, unreadable, not PEM.
        out += [
            Bad("bad file", file, v, s, field_level=False)
            for v, s in [
                ("absent.pem", "No such file or directory"),
                (".", "Is a directory"),
                ("fifo", "not a regular file (a FIFO)"),
                ("/dev/null", "a character device"),
                ("/proc/self/mem", "cannot read"),
                ("notes.txt", f"contains no PEM {what}"),
            ]
        ]
    out += [
        Bad("bad file", (TLS, "key_file"), "server.crt", "contains no PEM private key", field_level=False),
        Bad("bad file", (TLS, "cert_file"), "server.key", "contains no PEM certificate", field_level=False),
        Bad(
            "bad file",
            (TLS, "key_file"),
            "other.key",
            "cannot load the certificate and key",
            f"{TLS}.cert_file",
            field_level=False,
        ),
    ]
    auth = (TLS, "client_auth_type")
    out += [_out(auth, "Always", "unknown value 'Always'")]
    out += [
        _out(auth, v, "is not supported")
        for v in ("RequireAnyClientCert", "RequestClientCert", "RequireClientCert")
    ]
    for version in ("min_version", "max_version"):
        out += [_out((TLS, version), v, "unknown value") for v in ("TLS14", "tls12", "SSL3")]
    sans, suites, curves = (TLS, "client_allowed_sans"), (TLS, "cipher_suites"), (TLS, "curve_preferences")
    out += [
        _out(sans, ["a"] * 1001, "must have at most 1000 item(s)"),
        _out(sans, ["ok", "a\x07b"], bidi, "[1]"),
        _out(sans, ["x" * 4097], "at most 4096", "[0]"),
        _out(suites, ["TLS_RSA_WITH_RC4_128_SHA"], "unknown or insecure cipher suite", "[0]"),
        _out(suites, [5], "must be a string", "[0]"),
        _out(suites, ["TLS_AES_128_GCM_SHA256"] * 1001, "at most 1000 item(s)"),
        _out(curves, ["P256"], "unknown value 'P256'", "[0]"),
        _rule(curves, ["X25519", "CurveP256"], "list one"),
        _rule((TLS, "min_version"), "TLS13", "greater than max_version", also=(("max_version", "TLS12"),)),
        _rule(suites, ["TLS_AES_128_GCM_SHA256"], "only TLS 1.3 suites"),
        _rule(sans, ["a"], "needs client_auth_type", also=((auth[1], "VerifyClientCertIfGiven"),)),
        _rule(auth, "NoClientCert", "a client CA is set", also=((sans[1], None),)),
        _rule((TLS, "client_ca_file"), None, "missing (client_auth_type", at=(TLS,)),
        _rule((TLS, "key_file"), None, "missing (set key_file or key)", at=(TLS,)),
        _rule((TLS, "cert"), "-----BEGIN CERTIFICATE-----", "set only one of cert and cert_file"),
    ]
    headers = (HTTP, "headers")
    out += [
        _out(headers, {"Authorization": "x"}, "can not be configured", ".Authorization"),
        _out(headers, {"X-Frame-Options": "allow"}, "invalid value 'allow'", ".X-Frame-Options"),
        _out(headers, {"X-Content-Type-Options": "sniff"}, "invalid value", ".X-Content-Type-Options"),
        _out(headers, {"X-Frame-Options": HASH}, "invalid value '[REDACTED]'", ".X-Frame-Options"),
        _out(headers, {"X-XSS-Protection": "0\r\nSet-Cookie: a=b"}, bidi, ".X-XSS-Protection"),
        _out(headers, {"Strict-Transport-Security": 5}, "must be a string", ".Strict-Transport-Security"),
        _out(headers, {f"X-H{i}": "x" for i in range(21)}, "at most 20 item(s)"),
        _out(
            headers,
            {"X-Frame-Options": "deny", "x-frame-options": "deny"},
            "more than once",
            ".x-frame-options",
        ),
    ]
    users = ("basic_auth_users",)
    out += [
        _out(users, {"alice": "plaintext-password"}, "not a bcrypt hash", ".alice"),
        _out(users, {HASH: "plaintext-password"}, "not a bcrypt hash", ".[REDACTED]", at=(*users, HASH)),
        _out(users, {"alice": "$2y$03$" + HASH[7:]}, "cost must be between 04 and 31", ".alice"),
        _out(users, {"alice": 12345678}, "must be a string", ".alice"),
        _out(users, {"alice": HASH + "x" * 100}, "at most 128 characters", ".alice"),
        _out(users, {"a:b": HASH}, "user name 'a:b' can not contain ':'", at=(*users, "a:b")),
        _out(users, {"": HASH}, "must not be empty", at=(*users, "")),
        _out(users, {"a\x1bb": HASH}, "printable text", at=(*users, "a\x1bb")),
        _out(users, {f"u{i}": HASH for i in range(10_001)}, "at most 10000 item(s)"),
    ]
    burst, interval = (RATE, "burst"), (RATE, "interval")
    out += [_out(burst, -1, "must be at least 0"), _out(burst, 10**7, "must be at most 1000000")]
    out += [
        _out(burst, int("9" * 200), "number too large (200 characters)"),
        _rule(burst, 0, "when interval is set"),
    ]
    out += [_out(interval, v, "must be a duration") for v in ("soon", "1x", "-1s", "1h30", "1s" * 40)]
    out.append(_out(interval, "99999h", "must be at most 8784h"))
    # Unknown keys: each real key with its last letter dropped, in its block; the line suggests the key.
    blocks: dict[tuple[str, ...], list[str]] = {(): [TLS, HTTP, "basic_auth_users", RATE]}
    blocks[(TLS,)] = [key[1] for key in KINDS if key[0] == TLS and len(key) == 2]
    blocks[(HTTP,)], blocks[(RATE,)] = ["http2", "headers"], ["interval", "burst"]
    for block, keys in blocks.items():
        out += [Bad("unknown key", (*block, k[:-1]), "x", f"unknown key (did you mean '{k}'?)") for k in keys]
    return out


BAD_VALUES = _bad_values()


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, client_ca: trustme.CA) -> Path:
    """A directory with a server certificate and key, a client CA, another key, a FIFO and a text file."""
    directory = tmp_path_factory.mktemp("web-config-families")
    write_leaf(ca.issue_cert("127.0.0.1"), directory)
    write_leaf(ca.issue_cert("127.0.0.1"), directory, stem="other")
    client_ca.cert_pem.write_to_path(str(directory / "clients-ca.crt"))
    os.mkfifo(directory / "fifo")
    (directory / "notes.txt").write_text("not a certificate\n")
    return directory


def valid_document() -> dict[str, Any]:
    """A web config using every block: TLS with mTLS, headers, users and a rate limit."""
    return {
        TLS: {
            "cert_file": "server.crt",
            "key_file": "server.key",
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": "clients-ca.crt",
            "client_allowed_sans": ["scraper.example"],
            "min_version": "TLS12",
            "max_version": "TLS13",
            "cipher_suites": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
            "prefer_server_cipher_suites": True,
            "curve_preferences": ["X25519"],
        },
        HTTP: {"http2": True, "headers": {"X-Frame-Options": "deny"}},
        "basic_auth_users": {"prometheus": HASH},
        RATE: {"interval": "1s", "burst": 10},
    }


def with_bad(document: dict[str, Any], bad: Bad) -> None:
    """Put ``bad`` (and its siblings) into ``document``; None removes a key."""
    *parents, leaf = bad.key
    node = document
    for part in parents:
        node = node[part]
    for key, value in ((leaf, bad.value), *bad.also):
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value


def line_of(text: str, at: tuple[str | int, ...]) -> int:
    """The 1-based line where ``at`` is written in a block-style ``yaml.safe_dump`` of a document."""
    lines = text.splitlines()
    row, indent = -1, 0
    for part in at:
        if isinstance(part, int):  # block lists sit at their key's indent
            items = [i for i in range(row + 1, len(lines)) if lines[i].startswith(" " * (indent - 2) + "- ")]
            row = items[part]
            continue
        spelt = yaml.safe_dump({part: 0}, width=1 << 20).splitlines()[0]  # "key: 0", or "? key" if empty
        prefix = " " * indent + (spelt if spelt.startswith("? ") else spelt[: -len(" 0")])
        row = next(
            i for i in range(row + 1, len(lines)) if lines[i] == prefix or lines[i].startswith(prefix + " ")
        )
        indent += 2
    return row + 1


def dump(directory: Path, document: dict[str, Any]) -> tuple[str, str]:
    """Write ``document`` in block style, keys in insertion order; (path, text)."""
    text = yaml.safe_dump(document, sort_keys=False, width=1 << 20)
    path = directory / "web-config.yml"
    path.write_text(text)
    return str(path), text


def refusal(path: str) -> list[str]:
    """The lines load_web_security refuses ``path`` with (it must refuse it)."""
    with pytest.raises(WebConfigError) as info:
        load_web_security(path)
    assert isinstance(info.value, ValueError)
    return info.value.errors


def check_line(line: str, path: str, text: str, bad: Bad) -> int:
    """``line`` is ``bad``'s: file, line:column of its key, field, message; no secret. Its line number."""
    match = re.fullmatch(rf"{re.escape(path)}:(\d+):(\d+): {re.escape(bad.where)}: (.+)", line)
    assert match is not None, (line, bad.where)
    assert bad.says in match[3], (line, bad.says)
    assert int(match[1]) == line_of(text, bad.points_at), (line, text.splitlines()[int(match[1]) - 1])
    for secret in (HASH, PASSWORD, "PRIVATE KEY", "plaintext-password", "12345678"):
        assert secret not in line
    return int(match[1])


def test_the_valid_document_loads(estate: Path) -> None:
    """The baseline of the families is valid, so each family's line is its bad value's alone."""
    security = load_web_security(dump(estate, valid_document())[0])
    assert security.tls_enabled
    assert security.users == frozenset({"prometheus"})


@pytest.mark.parametrize("bad", BAD_VALUES, ids=[b.id for b in BAD_VALUES])
def test_each_bad_value_is_one_located_line(estate: Path, bad: Bad) -> None:
    """Why: a user fixes what the line names, where it says. One bad value, one line, at its key."""
    document = valid_document()
    with_bad(document, bad)
    path, text = dump(estate, document)
    lines = refusal(path)
    assert len(lines) == 1, lines
    check_line(lines[0], path, text, bad)


def test_the_families_cover_every_key_and_family() -> None:
    """Every key the models accept has a wrong-type, an out-of-range or a file case, and an unknown-key
    case next to it: a key added to the models without a family here fails this."""
    from exporter.http.webconfig import HttpServerConfig, RateLimit, TlsServerConfig, WebConfigFile

    keys: set[tuple[str, ...]] = {(k,) for k in WebConfigFile.model_fields}
    for block, model in ((TLS, TlsServerConfig), (HTTP, HttpServerConfig), (RATE, RateLimit)):
        keys |= {(block, k) for k in model.model_fields}
    assert keys == set(KINDS)
    families = {(b.key, b.family) for b in BAD_VALUES}
    assert all((key, "wrong type") in families for key in keys)
    assert {b.key for b in BAD_VALUES if b.family == "out of range"} >= {
        k for k, kind in KINDS.items() if kind != "bool"
    } - {(k,) for k in (TLS, HTTP, RATE)}
    assert {b.key[-1] for b in BAD_VALUES if b.family == "bad file"} == {
        "cert_file",
        "key_file",
        "client_ca_file",
    }
    assert len({b.key[:-1] for b in BAD_VALUES if b.family == "unknown key"}) == 4
    assert len(BAD_VALUES) > 150


ONE_AT_A_TIME = [b for b in BAD_VALUES if b.field_level and not b.also]


@FAMILIES
@given(picked=st.lists(st.sampled_from(ONE_AT_A_TIME), min_size=2, max_size=10, unique_by=lambda b: b.key))
def test_every_problem_at_once(estate: Path, picked: list[Bad]) -> None:
    """Why: a file with several mistakes names them all at once, one located line each, in file order
    (fixing a file one error per restart is what the loader spares its users)."""
    chosen = [b for b in picked if not any(o.key[: len(b.key)] == b.key and o is not b for o in picked)]
    document = valid_document()
    for bad in chosen:
        with_bad(document, bad)
    path, text = dump(estate, document)
    lines = refusal(path)
    assert len(lines) == len(chosen), (lines, [b.where for b in chosen])
    order = sorted(chosen, key=lambda b: line_of(text, b.points_at))
    numbers = [check_line(line, path, text, bad) for line, bad in zip(lines, order, strict=True)]
    assert numbers == sorted(numbers)


def test_rules_and_file_references_of_a_block_at_once(estate: Path) -> None:
    """A block's cross-field rules and file references are reported together, each at its own key."""
    document = valid_document()
    tls = document[TLS]
    tls.update(cert_file="absent.pem", key_file=".", min_version="TLS13", max_version="TLS12")
    tls["client_ca_file"] = "notes.txt"
    path, text = dump(estate, document)
    lines = refusal(path)
    wanted = [
        Bad("", (TLS, "cert_file"), None, "No such file or directory"),
        Bad("", (TLS, "key_file"), None, "Is a directory"),
        Bad("", (TLS, "client_ca_file"), None, "contains no PEM certificate"),
        Bad("", (TLS, "min_version"), None, "greater than max_version"),
    ]
    assert len(lines) == len(wanted), lines
    order = sorted(wanted, key=lambda b: line_of(text, b.points_at))
    for line, bad in zip(lines, order, strict=True):
        check_line(line, path, text, bad)
