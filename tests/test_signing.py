"""V3 (ACS3-HMAC-SHA256) signing: the official vectors, the GetImage vectors, and agreement with the SDK."""

from __future__ import annotations

import hashlib
import re
import string
import uuid
from typing import Any

import yarl
from alibabacloud_tea_openapi.utils import Utils as TeaOpenApiUtils
from hypothesis import given, settings
from hypothesis import strategies as st
from Tea.request import TeaRequest

from exporter.config import ApiConfig
from exporter.credentials import Credential, StaticCredentialSource
from exporter.openapi.client import API_VERSION, USER_AGENT, EhpcClient, compact_json_list
from exporter.openapi.signing import (
    AUTHORIZATION_RE,
    EMPTY_SHA256,
    REQUIRED_SIGNED_HEADERS,
    canonical_query,
    canonical_request,
    sign,
    signature,
)

AK, SK = "YourAccessKeyId", "YourAccessKeySecret"
DATE, NONCE = "2023-10-26T10:22:32Z", "3156853299f313e23d1673dc12e1703d"
GETIMAGE_PARAMS = {
    "AdditionalRegionIds": compact_json_list(["cn-beijing", "cn-shanghai"]),
    "ImageId": "m-2ze74g5mvy4pjg12345",
    "ImageType": "VM",
}
GETIMAGE_HEADERS = {
    "host": "ehpcinstant.cn-hangzhou.aliyuncs.com",
    "x-acs-action": "GetImage",
    "x-acs-version": "2023-07-01",
    "x-acs-date": DATE,
    "x-acs-signature-nonce": NONCE,
}
ENCODED_REGIONS = "%5B%22cn-beijing%22%2C%22cn-shanghai%22%5D"


def _signature_of(authorization: str) -> str:
    m = AUTHORIZATION_RE.match(authorization)
    assert m is not None, authorization
    return m.group(3)


def _sdk_authorization(
    method: str, query: dict[str, str], headers: dict[str, str], body: bytes, sk: str
) -> str:
    """What alibabacloud-tea-openapi signs for the same request (headers include x-acs-content-sha256)."""
    req = TeaRequest()
    req.method = method
    req.pathname = "/"
    req.query = dict(query)
    payload = hashlib.sha256(body).hexdigest()
    req.headers = {**headers, "x-acs-content-sha256": payload}
    result: Any = TeaOpenApiUtils.get_authorization(req, "ACS3-HMAC-SHA256", payload, AK, sk)
    assert isinstance(result, str)
    return result


def test_official_v3_worked_example() -> None:
    """alibaba-openapi.md §2.4, the 10:22:32 / 3156… pair, byte for byte."""
    query = canonical_query(
        {"ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", "RegionId": "cn-shanghai"}
    )
    headers = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": DATE,
        "x-acs-signature-nonce": NONCE,
        "x-acs-content-sha256": EMPTY_SHA256,
    }
    canonical = canonical_request("POST", "/", query, headers, headers.keys(), EMPTY_SHA256)
    assert canonical == (
        "POST\n/\nImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai\n"
        "host:ecs.cn-shanghai.aliyuncs.com\nx-acs-action:RunInstances\n"
        "x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        "x-acs-date:2023-10-26T10:22:32Z\nx-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\n"
        "x-acs-version:2014-05-26\n\n"
        "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert (
        hashlib.sha256(canonical.encode()).hexdigest()
        == "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    )
    sig = "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    assert signature(SK, canonical) == sig
    signed = sign(
        method="POST", query=query, headers=headers, body=b"", access_key_id=AK, access_key_secret=SK
    )
    assert signed["authorization"] == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
        f"x-acs-date;x-acs-signature-nonce;x-acs-version,Signature={sig}"
    )
    # The doc's trap: its "add to request" listing pairs other date/nonce values with another signature.
    trap = {
        **headers,
        "x-acs-date": "2023-10-26T09:01:01Z",
        "x-acs-signature-nonce": "d410180a5abf7fe235dd9b74aca91fc0",
    }
    trap_signed = sign(
        method="POST", query=query, headers=trap, body=b"", access_key_id=AK, access_key_secret=SK
    )
    assert _signature_of(trap_signed["authorization"]) == (
        "e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804"
    )


def test_getimage_vector_a_query_parameters() -> None:
    query = canonical_query(GETIMAGE_PARAMS)
    assert query == f"AdditionalRegionIds={ENCODED_REGIONS}&ImageId=m-2ze74g5mvy4pjg12345&ImageType=VM"
    headers = {**GETIMAGE_HEADERS, "x-acs-content-sha256": EMPTY_SHA256}
    names = sorted(headers)
    assert (
        ";".join(names)
        == "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
    )
    canonical = canonical_request("POST", "/", query, headers, names, EMPTY_SHA256)
    assert (
        hashlib.sha256(canonical.encode()).hexdigest()
        == "30fb78e48d82e4a259e1b96a4f9a972bbe4aeab9dd903c64c9a002e4c9228186"
    )
    signed = sign(
        method="POST", query=query, headers=GETIMAGE_HEADERS, body=b"", access_key_id=AK, access_key_secret=SK
    )
    expected = "9d5df870fdc83c0a8f244d4dea244a30c0a6a1f678005e802b04db3f09dd207a"
    assert _signature_of(signed["authorization"]) == expected
    assert signed["x-acs-content-sha256"] == EMPTY_SHA256
    assert _signature_of(_sdk_authorization("POST", GETIMAGE_PARAMS, GETIMAGE_HEADERS, b"", SK)) == expected


def test_getimage_vector_b_form_body() -> None:
    body = f"AdditionalRegionIds={ENCODED_REGIONS}&ImageId=m-2ze74g5mvy4pjg12345&ImageType=VM".encode()
    headers = {**GETIMAGE_HEADERS, "content-type": "application/x-www-form-urlencoded"}
    signed = sign(method="POST", query="", headers=headers, body=body, access_key_id=AK, access_key_secret=SK)
    assert (
        signed["x-acs-content-sha256"] == "347587010db2c5869ca560501e8db4fd2f91ae67049e3d96ef5040578a42c81d"
    )
    assert "content-type" in signed["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    expected = "49a07ea34dd522376304cf612cd64b949760e73bea5d5da48099c2db92b8ce63"
    assert _signature_of(signed["authorization"]) == expected
    assert _signature_of(_sdk_authorization("POST", {}, headers, body, SK)) == expected


def test_getimage_vector_c_sts() -> None:
    headers = {**GETIMAGE_HEADERS, "x-acs-accesskey-id": AK, "x-acs-security-token": "CAIS-example-token"}
    signed = sign(
        method="POST",
        query=canonical_query(GETIMAGE_PARAMS),
        headers=headers,
        body=b"",
        access_key_id=AK,
        access_key_secret=SK,
    )
    expected = "f6125b21caa47f17fa4d90aa8b760d2a04adb03a57c43066569e5ac096ca0339"
    assert _signature_of(signed["authorization"]) == expected
    assert _signature_of(_sdk_authorization("POST", GETIMAGE_PARAMS, headers, b"", SK)) == expected


def test_canonical_query_encoding_is_rfc3986() -> None:
    """Space is %20 (not +), * is %2A, ~ stays, / and , are encoded; an empty value is ``k=``."""
    assert canonical_query({"b": "a b*c~d/e,f", "a": ""}) == "a=&b=a%20b%2Ac~d%2Fe%2Cf"
    assert canonical_query({}) == ""
    assert compact_json_list(["杭州", "a b"]) == '["杭州","a b"]'


# Parameter names as the API spells them (ASCII letters and digits): the SDK does not percent-encode names.
_names = st.text(string.ascii_letters + string.digits, min_size=1, max_size=12)
# Any Unicode value except surrogates (not encodable) and control characters (not sendable in a header).
_values = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=24)
_header_names = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=10).map(
    lambda s: f"x-acs-{s}"
)


@settings(max_examples=300, deadline=None)
@given(
    query=st.dictionaries(_names, _values, max_size=6),
    extra_headers=st.dictionaries(_header_names, _values, max_size=4),
    secret=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40),
    body=st.binary(max_size=64),
    host=st.sampled_from(["ehpcinstant.cn-hangzhou.aliyuncs.com", "127.0.0.1:18081", "[::1]:8443"]),
)
def test_signature_matches_official_sdk(
    query: dict[str, str], extra_headers: dict[str, str], secret: str, body: bytes, host: str
) -> None:
    """For random parameters, headers, secrets and bodies our Authorization equals tea-openapi's."""
    headers = {
        **extra_headers,
        "host": host,
        "x-acs-action": "GetImage",
        "x-acs-version": API_VERSION,
        "x-acs-date": DATE,
        "x-acs-signature-nonce": NONCE,
        "accept": "application/json",
        "User-Agent": USER_AGENT,  # mixed case on purpose: both sides lower-case names
    }
    ours = sign(
        method="POST",
        query=canonical_query(query),
        headers=headers,
        body=body,
        access_key_id=AK,
        access_key_secret=secret,
    )
    assert ours["authorization"] == _sdk_authorization("POST", query, headers, body, secret)


@settings(max_examples=100, deadline=None)
@given(
    params=st.dictionaries(_names, _values, min_size=1, max_size=5),
    token=st.one_of(
        st.none(), st.text(string.ascii_letters + string.digits + "+/=", min_size=1, max_size=60)
    ),
    secret=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40),
)
def test_client_request_headers_match_sdk(params: dict[str, str], token: str | None, secret: str) -> None:
    """The client's own header set (static part computed once) signs exactly like the SDK."""
    client = EhpcClient(
        ApiConfig(endpoint="127.0.0.1:18081", protocol="http"),
        StaticCredentialSource(Credential(AK, SK)),
    )
    query = canonical_query(params)
    headers = client._headers("ListImages", query, AK, secret, token)
    auth = headers.pop("authorization")
    m = AUTHORIZATION_RE.match(auth)
    assert m is not None
    signed = set(m.group(2).split(";"))
    assert signed >= REQUIRED_SIGNED_HEADERS | {"accept", "user-agent"}
    assert signed == set(headers)  # every header sent is signed
    assert headers["host"] == "127.0.0.1:18081"
    assert headers["x-acs-version"] == "2023-07-01"
    assert headers["accept"] == "application/json"
    assert headers["user-agent"].startswith("ehpc-image-exporter/")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", headers["x-acs-date"])
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-acs-signature-nonce"])
    if token:
        assert headers["x-acs-security-token"] == token
        assert headers["x-acs-accesskey-id"] == AK
    else:
        assert "x-acs-security-token" not in headers
        assert "x-acs-accesskey-id" not in headers
    # The SDK is given the decoded parameters; we send the canonical query byte for byte.
    assert auth == _sdk_authorization(
        "POST", params, {k: v for k, v in headers.items() if k != "x-acs-content-sha256"}, b"", secret
    )
    # encoded=True keeps the canonical bytes as they are (no re-encoding of ',', '*', '+' or space).
    assert yarl.URL(f"http://127.0.0.1:18081/?{query}", encoded=True).raw_query_string == query


def test_client_nonce_is_fresh_per_attempt() -> None:
    client = EhpcClient(ApiConfig(), StaticCredentialSource(Credential(AK, SK)))
    nonces = {client._headers("GetImage", "", AK, SK, None)["x-acs-signature-nonce"] for _ in range(200)}
    assert len(nonces) == 200
    for nonce in nonces:
        parsed = uuid.UUID(hex=nonce)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, nonce)


@settings(max_examples=50, deadline=None)
@given(
    params=st.dictionaries(_names, _values, max_size=5),
    token=st.one_of(
        st.none(), st.text(string.ascii_letters + string.digits + "+/=", min_size=1, max_size=60)
    ),
)
def test_client_fast_path_equals_generic_sign(params: dict[str, str], token: str | None) -> None:
    """The client's precomputed canonical request is exactly signing.sign over the headers it sends."""
    client = EhpcClient(ApiConfig(), StaticCredentialSource(Credential(AK, SK)))
    query = canonical_query(params)
    headers = client._headers("GetImage", query, AK, SK, token)
    generic = sign(
        method="POST",
        query=query,
        headers={k: v for k, v in headers.items() if k != "authorization"},
        body=b"",
        access_key_id=AK,
        access_key_secret=SK,
    )
    assert generic == headers
