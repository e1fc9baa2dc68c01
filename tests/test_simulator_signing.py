"""The simulator's own signing code and code table, against the documents and the official SDK.

The simulator checks the exporter's client, so it must not share the client's protocol code: that it
imports nothing of the exporter is an import-linter contract (pyproject.toml, `make lint`; its reach is
tested in test_import_contracts.py). What it does instead is checked here:

- Its own V3 code reproduces the official vectors of alibaba-openapi.md §2.4/§2.6, and accepts what the
  official SDK's signer signs, sent as the SDK puts it on the wire (hypothesis).
- Its own status table agrees with exporter/errors.py wherever both name a code.
"""

from __future__ import annotations

import calendar
import hashlib
import time
from typing import Any

import pytest
from alibabacloud_tea_openapi.utils import Utils as TeaOpenApiUtils
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from Tea.core import TeaCore
from Tea.request import TeaRequest

from ehpc_simulator import acs3, catalogue
from ehpc_simulator.auth import AuthFailure, StsStore, Verified, Verifier
from exporter import errors as exporter_errors

# ----- the official vectors, through the simulator's own code -----------------------------------------

AK, SK = "YourAccessKeyId", "YourAccessKeySecret"
DATE, NONCE = "2023-10-26T10:22:32Z", "3156853299f313e23d1673dc12e1703d"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SIGNED_NAMES = "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
DATE_EPOCH = float(calendar.timegm(time.strptime(DATE, "%Y-%m-%dT%H:%M:%SZ")))


def _verifier(sts: StsStore | None = None) -> Verifier:
    return Verifier({AK: SK}, sts or StsStore(), clock=lambda: DATE_EPOCH)


def test_official_worked_example_verifies() -> None:
    """alibaba-openapi.md §2.4, byte for byte: canonical request hash, signature, and a full verify."""
    raw_query = "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai"
    values = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": DATE,
        "x-acs-signature-nonce": NONCE,
        "x-acs-content-sha256": EMPTY_SHA256,
    }
    query = acs3.canonical_query_string(acs3.decode_query(raw_query))
    assert query == raw_query
    canonical = acs3.canonical_request("POST", "/", query, values, values, acs3.payload_hash(b""))
    assert hashlib.sha256(canonical.encode()).hexdigest() == (
        "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    )
    signature = "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    assert acs3.expected_signature(SK, acs3.string_to_sign(canonical)) == signature
    authorization = f"ACS3-HMAC-SHA256 Credential={AK},SignedHeaders={SIGNED_NAMES},Signature={signature}"
    headers = CIMultiDictProxy(CIMultiDict({**values, "Authorization": authorization}))
    assert _verifier().verify("POST", "/", raw_query, headers, b"") == Verified(AK, is_sts=False)
    # The doc's trap (§2.4): the nonce of its other listing does not match this signature.
    trap = CIMultiDict(headers)
    trap["x-acs-signature-nonce"] = "d410180a5abf7fe235dd9b74aca91fc0"
    result = _verifier().verify("POST", "/", raw_query, CIMultiDictProxy(trap), b"")
    assert isinstance(result, AuthFailure)
    assert result.code == "SignatureDoesNotMatch"


GETIMAGE_QUERY = (
    "AdditionalRegionIds=%5B%22cn-beijing%22%2C%22cn-shanghai%22%5D"
    "&ImageId=m-2ze74g5mvy4pjg12345&ImageType=VM"
)
GETIMAGE_HEADERS = {
    "host": "ehpcinstant.cn-hangzhou.aliyuncs.com",
    "x-acs-action": "GetImage",
    "x-acs-version": "2023-07-01",
    "x-acs-date": DATE,
    "x-acs-signature-nonce": NONCE,
}


@pytest.mark.parametrize(
    ("vector", "query", "body", "extra", "signature"),
    [
        ("A", GETIMAGE_QUERY, b"", {}, "9d5df870fdc83c0a8f244d4dea244a30c0a6a1f678005e802b04db3f09dd207a"),
        (
            "B",
            "",
            GETIMAGE_QUERY.encode(),
            {"content-type": "application/x-www-form-urlencoded"},
            "49a07ea34dd522376304cf612cd64b949760e73bea5d5da48099c2db92b8ce63",
        ),
        (
            "C",
            GETIMAGE_QUERY,
            b"",
            {"x-acs-accesskey-id": AK, "x-acs-security-token": "CAIS-example-token"},
            "f6125b21caa47f17fa4d90aa8b760d2a04adb03a57c43066569e5ac096ca0339",
        ),
    ],
)
def test_getimage_vectors(
    vector: str, query: str, body: bytes, extra: dict[str, str], signature: str
) -> None:
    """alibaba-openapi.md §2.6 vectors A (query), B (form body) and C (STS headers)."""
    values = {**GETIMAGE_HEADERS, **extra, "x-acs-content-sha256": acs3.payload_hash(body)}
    if vector == "B":
        assert values["x-acs-content-sha256"] == (
            "347587010db2c5869ca560501e8db4fd2f91ae67049e3d96ef5040578a42c81d"
        )
    canonical = acs3.canonical_request(
        "POST",
        "/",
        acs3.canonical_query_string(acs3.decode_query(query)),
        values,
        values,
        values["x-acs-content-sha256"],
    )
    assert acs3.expected_signature(SK, acs3.string_to_sign(canonical)) == signature
    if vector != "C":  # C's token was not issued by a simulator; A and B verify end to end
        names = ";".join(sorted(values))
        authorization = f"ACS3-HMAC-SHA256 Credential={AK},SignedHeaders={names},Signature={signature}"
        headers = CIMultiDictProxy(CIMultiDict({**values, "authorization": authorization}))
        assert _verifier().verify("POST", "/", query, headers, body) == Verified(AK, is_sts=False)


def test_percent_encoding_rules() -> None:
    """§2.1: unreserved kept, space %20 (not +), * %2A, ~ kept, / %2F, UTF-8 bytes upper-case hex."""
    assert acs3.rfc3986("aZ09-_.~") == "aZ09-_.~"
    assert acs3.rfc3986("a b*c/d+e=f&g") == "a%20b%2Ac%2Fd%2Be%3Df%26g"
    assert acs3.rfc3986("é") == "%C3%A9"
    assert acs3.decode_query("b=2&a=x+y&a=%2B&c&=v&&") == [
        ("b", "2"),
        ("a", "x y"),
        ("a", "+"),
        ("c", ""),
        ("", "v"),
    ]
    assert acs3.canonical_query_string([("a-b", "1"), ("a", "2"), ("B", "3")]) == "B=3&a=2&a-b=1"


# ----- the official signer as referee of the simulator's verifier -------------------------------------

_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,11}", fullmatch=True)
_VALUES = st.text(st.characters(codec="utf-8"), max_size=24)  # any encodable text: no lone surrogates
_HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24)


def _sdk_signed(query: dict[str, str], extra_header: str, body: bytes) -> tuple[str, CIMultiDictProxy[str]]:
    """What the official SDK sends: the raw query of its URL and its signed headers."""
    req = TeaRequest()
    req.method, req.pathname, req.protocol, req.port = "POST", "/", "http", 80
    req.query = dict(query)
    payload = hashlib.sha256(body).hexdigest()
    req.headers = {
        **GETIMAGE_HEADERS,
        "x-acs-content-sha256": payload,
        "user-agent": f"AlibabaCloud {extra_header}",
    }
    authorization: Any = TeaOpenApiUtils.get_authorization(req, "ACS3-HMAC-SHA256", payload, AK, SK)
    url: Any = TeaCore.compose_url(req)
    raw_query = str(url).partition("?")[2]
    headers = CIMultiDict(req.headers)
    headers["Authorization"] = str(authorization)
    return raw_query, CIMultiDictProxy(headers)


@settings(max_examples=300, deadline=None)
@given(query=st.dictionaries(_NAMES, _VALUES, max_size=6), extra_header=_HEADER_VALUES)
def test_what_the_sdk_signs_verifies(query: dict[str, str], extra_header: str) -> None:
    """Any query (unicode, spaces, +, *, ~, /, &, =, %) and header value: the SDK's signature verifies."""
    raw_query, headers = _sdk_signed(query, extra_header, b"")
    assert _verifier().verify("POST", "/", raw_query, headers, b"") == Verified(AK, is_sts=False)
    if query:  # and one changed value does not
        name = sorted(query)[0]
        tampered, _ = _sdk_signed({**query, name: query[name] + "x"}, extra_header, b"")
        result = _verifier().verify("POST", "/", tampered, headers, b"")
        assert isinstance(result, AuthFailure)
        assert result.code == "SignatureDoesNotMatch"


# ----- the simulator's table and the exporter's ----------------------------------------------------------


def test_tables_agree_where_both_name_a_code() -> None:
    """Two transcriptions of the same documents; a disagreement means one of them is wrong (the SDK
    tests in test_official_sdk.py say which side the simulator is on)."""
    exporter_table = {**exporter_errors.SEED_CODES, **exporter_errors.GATEWAY_CODES}
    shared = set(exporter_table) & set(catalogue.STATUSES)
    assert shared >= set(catalogue.SEED_STATUSES)
    assert {c: exporter_table[c] for c in shared} == {c: catalogue.STATUSES[c] for c in shared}
