"""The RPC ("V2", HMAC-SHA1) signature of the simulated STS, on the official vector (openapi doc §3)."""

from __future__ import annotations

from alibabacloud_credentials.utils import parameter_helper
from hypothesis import given
from hypothesis import strategies as st

from ehpc_simulator import rpcsig

OFFICIAL_PARAMS = {
    "AccessKeyId": "testid",
    "Action": "DescribeDedicatedHosts",
    "Format": "JSON",
    "RegionId": "cn-beijing",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "edb2b34af0af9a6d14deaf7c1a5315eb",
    "SignatureVersion": "1.0",
    "Timestamp": "2023-03-13T08:34:30Z",
    "Version": "2014-05-26",
}


def test_official_vector() -> None:
    """The documented example signs to 9NaGiOspFP5UPcwX8Iwt2YJXXuk= with secret testsecret."""
    to_sign = rpcsig.string_to_sign("GET", OFFICIAL_PARAMS.items())
    assert to_sign.startswith("GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeDedicatedHosts")
    assert rpcsig.signature("testsecret", to_sign) == "9NaGiOspFP5UPcwX8Iwt2YJXXuk="


def test_signature_param_is_not_signed() -> None:
    """``Signature`` itself is left out of the canonical string."""
    with_sig = [*OFFICIAL_PARAMS.items(), ("Signature", "whatever")]
    assert rpcsig.string_to_sign("GET", with_sig) == rpcsig.string_to_sign("GET", OFFICIAL_PARAMS.items())


_value = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=" "), max_size=20)


@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,10}", fullmatch=True), _value, max_size=6))
def test_agrees_with_the_credentials_library(params: dict[str, str]) -> None:
    """The library the exporter uses signs exactly as the simulator verifies (no spaces: see rpcsig)."""
    ours = rpcsig.signature("s3cret", rpcsig.string_to_sign("GET", params.items()))
    theirs = parameter_helper.sign_string(parameter_helper.compose_string_to_sign("GET", params), "s3cret&")
    assert ours == theirs
