"""The simulated STS: AssumeRole (V1-signed) and AssumeRoleWithOIDC, every refusal, lifetimes and counters.

Requests are built and signed with alibabacloud-credentials' own helpers (tests/fixtures/estate.py), so
a simulator bug in signing cannot hide behind a test helper sharing it.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehpc_simulator.auth import AuthFailure, KeyDirectory, StsStore
from ehpc_simulator.catalogue import STS_ERRORS, sts_status_of
from ehpc_simulator.estate import Estate
from ehpc_simulator.rpcsig import RpcVerified, RpcVerifier
from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_ID,
    ALPHA_SECRET,
    BETA_AK,
    BETA_HZ_IMAGE,
    BETA_ID,
    BETA_SECRET,
    EXTERNAL_ID,
    GAMMA_HZ_IMAGE,
    GAMMA_ID,
    GUARDED_ARN,
    HZ,
    ISSUER,
    NO_OIDC_ROLE_ARN,
    OIDC_ROLE_ARN,
    PROVIDER_ARN,
    READER_ARN,
    SELF_READER_ARN,
    RunningEstate,
    assume_role_params,
    estate_data,
    library_signature,
    oidc_params,
    region_target,
    sts_call,
    utc_timestamp,
)
from tests.fixtures.sim import signed_call


@pytest.fixture
async def session() -> Any:
    """One aiohttp client session per test."""
    async with aiohttp.ClientSession() as s:
        yield s


def _ok(status: int, body: dict[str, Any]) -> dict[str, str]:
    assert status == 200, body
    creds: dict[str, str] = body["Credentials"]
    return creds


# ----- AssumeRole: success ------------------------------------------------------------------------------


async def test_assume_role_answers_like_the_cloud(
    session: aiohttp.ClientSession, estate: RunningEstate
) -> None:
    """A trusted key gets credentials of the role's account, in the documented shape."""
    status, headers, body = await sts_call(session, estate, assume_role_params())
    creds = _ok(status, body)
    assert set(body) == {"RequestId", "AssumedRoleUser", "Credentials"}
    assert headers["x-acs-request-id"] == body["RequestId"]
    assert body["AssumedRoleUser"]["Arn"] == f"acs:ram::{BETA_ID}:role/reader/credentials-python-1700000000"
    assert body["AssumedRoleUser"]["AssumedRoleId"].endswith(":credentials-python-1700000000")
    assert creds["AccessKeyId"].startswith("STS.")
    assert set(creds) == {"AccessKeyId", "AccessKeySecret", "SecurityToken", "Expiration"}
    expires = time.mktime(time.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 3590 < expires - time.time() <= 3600
    assert estate.estate.sts_counters() == {("AssumeRole", "Success"): 1}


async def test_role_names_are_case_insensitive(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """RAM role names are case-insensitive: ROLE/READER is role/reader."""
    params = assume_role_params(READER_ARN.replace("reader", "READER"))
    status, _, body = await sts_call(session, estate, params)
    _ok(status, body)


async def test_post_form_is_accepted(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """The same request as a POST form body, signed with POST."""
    status, _, body = await sts_call(session, estate, assume_role_params(), method="POST")
    _ok(status, body)


async def test_issued_key_works_for_the_role_account_only(
    session: aiohttp.ClientSession, estate: RunningEstate
) -> None:
    """The credentials act for beta: beta's image answers, alpha's does not exist for them."""
    creds = _ok(*(await sts_call(session, estate, assume_role_params()))[::2])
    target = region_target(estate, HZ, creds["AccessKeyId"], creds["AccessKeySecret"])
    token = creds["SecurityToken"]
    status, _, body = await signed_call(
        session, target, "GetImage", {"ImageId": BETA_HZ_IMAGE}, security_token=token
    )
    assert status == 200, body
    status, _, body = await signed_call(
        session, target, "GetImage", {"ImageId": "m-alpha0000000000hz01"}, security_token=token
    )
    assert (status, body["Code"]) == (404, "ImageNotFound")
    assert estate.estate.account("beta").region(HZ).counters() == {
        ("GetImage", "Success"): 1,
        ("GetImage", "ImageNotFound"): 1,
    }


async def test_sts_token_as_base_credential(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """An STS credential may call AssumeRole with its SecurityToken (checked as the gateway checks it)."""
    creds = _ok(*(await sts_call(session, estate, assume_role_params()))[::2])
    chained = assume_role_params(SELF_READER_ARN, creds["AccessKeyId"], creds["SecurityToken"])
    status, _, body = await sts_call(session, estate, chained, secret=creds["AccessKeySecret"])
    _ok(status, body)
    unsent = assume_role_params(SELF_READER_ARN, creds["AccessKeyId"])
    status, _, body = await sts_call(session, estate, unsent, secret=creds["AccessKeySecret"])
    assert (status, body["Code"]) == (400, "InvalidSecurityToken.Malformed")
    estate.clock.advance(3601)
    expired = assume_role_params(SELF_READER_ARN, creds["AccessKeyId"], creds["SecurityToken"])
    status, _, body = await sts_call(session, estate, expired, secret=creds["AccessKeySecret"])
    assert (status, body["Code"]) == (400, "InvalidSecurityToken.Expired")


# ----- AssumeRole: every refusal ------------------------------------------------------------------------


def _with(**changes: str) -> dict[str, str]:
    params = assume_role_params()
    params.update(changes)
    return params


REFUSALS: list[tuple[str, dict[str, str], dict[str, Any], int, str]] = [
    # id, params, sts_call keywords, status, code
    ("no-action", _with(), {"drop": {"Action"}}, 400, "MissingAction"),
    ("other-action", _with(Action="GetCallerIdentity"), {}, 404, "InvalidAction.NotFound"),
    ("other-version", _with(Version="2014-05-26"), {}, 404, "InvalidAction.NotFound"),
    ("no-version", _with(), {"drop": {"Version"}}, 400, "MissingVersion"),
    ("no-signature", _with(), {"drop": {"Signature"}}, 400, "MissingSignature"),
    ("no-nonce", _with(), {"drop": {"SignatureNonce"}}, 400, "MissingSignatureNonce"),
    ("no-timestamp", _with(), {"drop": {"Timestamp"}}, 400, "MissingTimestamp"),
    ("no-key", _with(), {"drop": {"AccessKeyId"}}, 400, "MissingAccessKeyId"),
    ("sha256", _with(SignatureMethod="HMAC-SHA256"), {}, 400, "IncompleteSignature"),
    ("unknown-key", _with(AccessKeyId="NOBODY"), {}, 404, "InvalidAccessKeyId.NotFound"),
    ("wrong-secret", _with(), {"secret": "not-the-secret"}, 400, "SignatureDoesNotMatch"),
    ("token-on-long-term-key", _with(SecurityToken="CAISx"), {}, 400, "InvalidSecurityToken.Malformed"),
    ("skew", _with(_skew="-960"), {}, 400, "InvalidTimeStamp.Expired"),
    ("future", _with(_skew="960"), {}, 400, "InvalidTimeStamp.Expired"),
    ("bad-timestamp", _with(_timestamp="2024-13-01T00:00:00Z"), {}, 400, "InvalidTimeStamp.Format"),
    ("no-role", _with(), {"drop": {"RoleArn"}}, 400, "MissingParameter.RoleArn"),
    ("no-session", _with(), {"drop": {"RoleSessionName"}}, 400, "MissingParameter.RoleSessionName"),
    ("bad-arn", _with(RoleArn="acs:ram::beta:role/reader"), {}, 400, "InvalidParameter.RoleArn"),
    ("user-arn", _with(RoleArn=f"acs:ram::{BETA_ID}:user/reader"), {}, 400, "InvalidParameter.RoleArn"),
    ("short-session", _with(RoleSessionName="a"), {}, 400, "InvalidParameter.RoleSessionName"),
    ("bad-session", _with(RoleSessionName="a*b"), {}, 400, "InvalidParameter.RoleSessionName"),
    ("short-duration", _with(DurationSeconds="899"), {}, 400, "InvalidParameter.DurationSeconds"),
    ("long-duration", _with(DurationSeconds="3601"), {}, 400, "InvalidParameter.DurationSeconds"),
    ("text-duration", _with(DurationSeconds="1h"), {}, 400, "InvalidParameter.DurationSeconds"),
    ("bad-policy", _with(Policy="{not-json"), {}, 400, "InvalidParameter.PolicyGrammar"),
    ("missing-role", _with(RoleArn=f"acs:ram::{BETA_ID}:role/nope"), {}, 404, "EntityNotExist.Role"),
    (
        "missing-account",
        _with(RoleArn="acs:ram::9999999999999999:role/reader"),
        {},
        404,
        "EntityNotExist.Role",
    ),
    ("untrusted", _with(RoleArn=SELF_READER_ARN), {}, 403, "NoPermission"),
    ("no-external-id", _with(RoleArn=GUARDED_ARN), {}, 403, "NoPermission"),
    ("wrong-external-id", _with(RoleArn=GUARDED_ARN, ExternalId="ext-other"), {}, 403, "NoPermission"),
    ("bad-external-id", _with(RoleArn=GUARDED_ARN, ExternalId="x"), {}, 400, "InvalidParameter.ExternalId"),
]


@pytest.mark.parametrize(
    ("params", "kwargs", "status", "code"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
async def test_assume_role_refusals(
    session: aiohttp.ClientSession,
    estate: RunningEstate,
    params: dict[str, str],
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    """Each fault is answered with its code, at the table's status, in the common error shape."""
    params = {**params, "SignatureNonce": f"{params['SignatureNonce']}-{code}"}  # fresh per case
    # The table is built at import: its times are made now, relative to when the test runs.
    skew = float(params.pop("_skew", "0"))
    params["Timestamp"] = params.pop("_timestamp", "") or utc_timestamp(skew)
    got_status, headers, body = await sts_call(session, estate, params, **kwargs)
    assert (got_status, body["Code"]) == (status, code), body
    assert got_status == sts_status_of(code)
    assert set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert body["HostId"] == "sts.aliyuncs.com"
    assert headers["x-acs-request-id"] == body["RequestId"]
    assert ALPHA_SECRET not in str(body)
    action = params["Action"] if "Action" not in kwargs.get("drop", ()) else ""
    assert estate.estate.sts_counters() == {(action, code): 1}


async def test_external_id_when_required(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """The guarded role admits alpha only with its ExternalId."""
    status, _, body = await sts_call(session, estate, _with(RoleArn=GUARDED_ARN, ExternalId=EXTERNAL_ID))
    _ok(status, body)


async def test_nonce_reuse(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """A nonce is good once; a forged request does not burn it."""
    params = assume_role_params()
    forged = await sts_call(session, estate, params, secret="forged")
    assert forged[2]["Code"] == "SignatureDoesNotMatch"
    _ok(*(await sts_call(session, estate, params))[::2])
    status, _, body = await sts_call(session, estate, params)
    assert (status, body["Code"]) == (400, "SignatureNonceUsed")


async def test_revoked_trust_then_restored(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """set_trust(False) refuses the role to everyone; True restores it; the admin API does the same."""
    estate.estate.set_trust(READER_ARN, False)
    status, _, body = await sts_call(session, estate, assume_role_params())
    assert (status, body["Code"]) == (403, "NoPermission")
    estate.estate.set_trust(READER_ARN, True)
    _ok(*(await sts_call(session, estate, assume_role_params()))[::2])
    admin = f"{estate.ep.sts_url}/_sim/trust"
    async with session.put(
        admin, json={"role_arn": READER_ARN, "trusted": False}, ssl=estate.client_ssl
    ) as r:
        assert r.status == 200
        assert (await r.json())["trusted"] is False
    status, _, body = await sts_call(session, estate, assume_role_params())
    assert body["Code"] == "NoPermission"
    async with session.put(admin, json={"role_arn": READER_ARN, "trusted": True}, ssl=estate.client_ssl) as r:
        assert r.status == 200
    _ok(*(await sts_call(session, estate, assume_role_params()))[::2])


# ----- families: a signed request changed anywhere never passes ------------------------------------------


def _verifier() -> tuple[RpcVerifier, float]:
    keys = KeyDirectory()
    keys.add_account(ALPHA_ID, {ALPHA_AK: ALPHA_SECRET})
    now = time.time()
    return RpcVerifier(keys, StsStore(), clock=lambda: now), now


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(assume_role_params())),
    st.sampled_from(["drop", "append", "replace", "case"]),
    st.text(min_size=1, max_size=8),
)
def test_mutated_requests_never_verify(name: str, how: str, junk: str) -> None:
    """Dropping, changing or extending any signed parameter (Signature included) is refused."""
    verifier, _ = _verifier()
    params = assume_role_params()
    params["Signature"] = library_signature(params, ALPHA_SECRET)
    assert isinstance(verifier.verify("GET", list(params.items())), RpcVerified)
    mutated = dict(params)
    target = name if how != "case" else "Signature"
    if how == "drop":
        del mutated[target]
    elif how == "append":
        mutated[target] += junk
    elif how == "replace":
        if junk == mutated[target]:
            junk += "x"
        mutated[target] = junk
    else:
        mutated[target] = mutated[target].swapcase()
        if mutated[target] == params[target]:
            mutated[target] += "x"
    verifier, _ = _verifier()  # fresh nonces: only the mutation can refuse
    assert isinstance(verifier.verify("GET", list(mutated.items())), AuthFailure)


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=10), st.text(max_size=10))
def test_added_parameters_are_signed(name: str, value: str) -> None:
    """A parameter added after signing changes the string to sign."""
    verifier, _ = _verifier()
    params = assume_role_params()
    params["Signature"] = library_signature(params, ALPHA_SECRET)
    if name in params:
        return
    assert isinstance(verifier.verify("GET", [*params.items(), (name, value)]), AuthFailure)


# ----- AssumeRoleWithOIDC -------------------------------------------------------------------------------


async def test_oidc_success(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """A token of the trusted provider gets gamma's credentials; they read gamma's images."""
    token = estate.estate.issue_oidc_token("rrsa")
    status, _, body = await sts_call(session, estate, oidc_params(token), secret=None)
    creds = _ok(status, body)
    assert body["AssumedRoleUser"]["Arn"].startswith(f"acs:ram::{GAMMA_ID}:role/oidc-reader/")
    target = region_target(estate, HZ, creds["AccessKeyId"], creds["AccessKeySecret"])
    status, _, got = await signed_call(
        session, target, "GetImage", {"ImageId": GAMMA_HZ_IMAGE}, security_token=creds["SecurityToken"]
    )
    assert status == 200, got
    assert estate.estate.sts_counters() == {("AssumeRoleWithOIDC", "Success"): 1}


def _tampered(token: str) -> str:
    head, claims, sig = token.split(".")
    return f"{head}.{claims}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}"


OIDC_REFUSALS: list[tuple[str, dict[str, Any], dict[str, str], int, str]] = [
    # id, issue_oidc_token keywords (None: a garbage token), param changes, status, code
    (
        "wrong-issuer",
        {"issuer": "https://evil.example"},
        {},
        401,
        "AuthenticationFail.OIDCToken.IssuerNotMatch",
    ),
    ("wrong-audience", {"audience": "other"}, {}, 401, "AuthenticationFail.OIDCToken.AudienceNotMatch"),
    ("expired", {"ttl_seconds": -60}, {}, 401, "AuthenticationFail.OIDCToken.Expired"),
    ("bad-signature", {"tamper": True}, {}, 401, "AuthenticationFail.OIDCToken.Invalid"),
    ("garbage", {"garbage": True}, {}, 401, "AuthenticationFail.OIDCToken.Invalid"),
    ("untrusted-provider", {}, {"RoleArn": NO_OIDC_ROLE_ARN}, 403, "AuthenticationFail.NoPermission"),
    (
        "unknown-provider",
        {},
        {"OIDCProviderArn": f"acs:ram::{GAMMA_ID}:oidc-provider/other"},
        403,
        "AuthenticationFail.NoPermission",
    ),
    ("bad-provider-arn", {}, {"OIDCProviderArn": "rrsa"}, 400, "InvalidParameter.OIDCProviderArn"),
    ("missing-role", {}, {"RoleArn": f"acs:ram::{GAMMA_ID}:role/nope"}, 404, "EntityNotExist.Role"),
    ("short-duration", {}, {"DurationSeconds": "60"}, 400, "InvalidParameter.DurationSeconds"),
    ("no-token", {}, {"OIDCToken": ""}, 400, "MissingParameter.OIDCToken"),
]


@pytest.mark.parametrize(
    ("issue", "changes", "status", "code"), [r[1:] for r in OIDC_REFUSALS], ids=[r[0] for r in OIDC_REFUSALS]
)
async def test_oidc_refusals(
    session: aiohttp.ClientSession,
    estate: RunningEstate,
    issue: dict[str, Any],
    changes: dict[str, str],
    status: int,
    code: str,
) -> None:
    """Each faulty token or parameter is answered with its code and status."""
    issue = dict(issue)
    tamper, garbage = issue.pop("tamper", False), issue.pop("garbage", False)
    token = "not.a.jwt" if garbage else estate.estate.issue_oidc_token(PROVIDER_ARN, **issue)
    if tamper:
        token = _tampered(token)
    params = {**oidc_params(token), **changes}
    got_status, _, body = await sts_call(session, estate, params, secret=None)
    assert (got_status, body["Code"]) == (status, code), body
    assert estate.estate.sts_counters() == {("AssumeRoleWithOIDC", code): 1}


async def test_oidc_token_of_another_provider_key(
    session: aiohttp.ClientSession, estate: RunningEstate
) -> None:
    """Claims copied exactly but signed by another provider's key: the signature check refuses it."""
    other = estate.estate.account("gamma").add_oidc_provider("other", issuer=ISSUER)
    token = estate.estate.issue_oidc_token(other.arn)
    status, _, body = await sts_call(session, estate, oidc_params(token), secret=None)
    assert (status, body["Code"]) == (401, "AuthenticationFail.OIDCToken.Invalid")


async def test_oidc_revoked_trust(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """A revoked trust policy refuses OIDC callers too, until restored."""
    estate.estate.set_trust(OIDC_ROLE_ARN, False)
    token = estate.estate.issue_oidc_token("rrsa")
    status, _, body = await sts_call(session, estate, oidc_params(token), secret=None)
    assert (status, body["Code"]) == (403, "AuthenticationFail.NoPermission")
    estate.estate.set_trust(OIDC_ROLE_ARN, True)
    _ok(*(await sts_call(session, estate, oidc_params(token), secret=None))[::2])


# ----- lifetimes ----------------------------------------------------------------------------------------


async def test_short_lifetime_expires_at_the_gateway(
    session: aiohttp.ClientSession, estate: RunningEstate
) -> None:
    """sts_max_ttl_seconds caps the lifetime whatever was asked; past it the gateway says Expired."""
    estate.estate.sts_max_ttl_seconds = 30
    creds = _ok(*(await sts_call(session, estate, assume_role_params()))[::2])
    expires = time.mktime(time.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 28 <= expires - time.time() <= 30
    target = region_target(estate, HZ, creds["AccessKeyId"], creds["AccessKeySecret"])
    token = creds["SecurityToken"]
    status, _, body = await signed_call(
        session, target, "GetImage", {"ImageId": BETA_HZ_IMAGE}, security_token=token
    )
    assert status == 200, body
    estate.clock.advance(31)
    # The request's own x-acs-date must follow the estate clock, else it is refused for skew first.
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(estate.clock()))
    status, _, body = await signed_call(
        session, target, "GetImage", {"ImageId": BETA_HZ_IMAGE}, security_token=token, date=date
    )
    assert (status, body["Code"]) == (400, "InvalidSecurityToken.Expired")
    assert (
        estate.estate.account("beta").region(HZ).counters()[("GetImage", "InvalidSecurityToken.Expired")] == 1
    )


async def test_lifetime_cap_through_the_admin_api(
    session: aiohttp.ClientSession, estate: RunningEstate
) -> None:
    """PATCH /_sim/sts sets the cap; null lifts it."""
    url = f"{estate.ep.sts_url}/_sim/sts"
    async with session.patch(url, json={"sts_max_ttl_seconds": 5}, ssl=estate.client_ssl) as r:
        assert r.status == 200
    assert estate.estate.sts_max_ttl_seconds == 5
    async with session.patch(url, json={"sts_max_ttl_seconds": -1}, ssl=estate.client_ssl) as r:
        assert r.status == 400
    async with session.patch(url, json={"sts_max_ttl_seconds": None}, ssl=estate.client_ssl) as r:
        assert r.status == 200
    assert estate.estate.sts_max_ttl_seconds is None


# ----- the table ----------------------------------------------------------------------------------------


def test_every_sts_code_has_a_status_message_and_source() -> None:
    """One table: each row is (status, message, source), statuses are errors."""
    for code, (status, message, source) in STS_ERRORS.items():
        assert 400 <= status < 600, code
        assert message, code
        assert source, code


def test_estate_trusts_resolve_names() -> None:
    """The file's account names and provider names become ids and ARNs."""
    built = Estate.from_dict(estate_data())
    reader = built.find_role(READER_ARN)
    assert reader is not None
    assert reader.trusted_accounts == {ALPHA_ID}
    oidc = built.find_role(OIDC_ROLE_ARN)
    assert oidc is not None
    assert oidc.trusted_oidc_providers == {PROVIDER_ARN}
    assert oidc.trusted_accounts == set()
    self_reader = built.find_role(SELF_READER_ARN)
    assert self_reader is not None
    assert self_reader.trusted_accounts == {BETA_ID}
    assert BETA_AK in built.account("beta").access_keys
    assert built.account(BETA_ID).access_keys[BETA_AK] == BETA_SECRET
