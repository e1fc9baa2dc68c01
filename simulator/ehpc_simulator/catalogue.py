"""The error codes the simulator can answer, with their HTTP status and the message the cloud sends.

The statuses are the simulator's own transcription of the documents, deliberately not shared with
:mod:`exporter.errors`: the simulator plays the cloud the exporter is tested against, and the
official SDK referees both (tests/test_official_sdk.py).
"""

from __future__ import annotations

ACTIONS = frozenset({"GetImage", "ListImages"})
API_VERSION = "2023-07-01"
PRODUCT = "EhpcInstant"

# Messages as documented (alibaba-openapi.md §4.2/§4.3 and the seed); [U] ones are plausible wording.
MESSAGES: dict[str, str] = {
    "InvalidParams": "The specified parameter %s is invalid.",
    "NotEnabled": "You have not enabled this service.",
    "ImageNotFound": "The specified image does not exist.",
    "ServiceUnavailable": "The request has failed due to a temporary failure of the server.",
    "EcsError": "An error occurred while calling the ECS API operation.",
    "AliyunError": "An Alibaba Cloud product error occurred.",
    "DbError": "A database error occurred.",
    "NotAuthorized": "No authorization is granted.",
    "Throttling": "Request was denied due to flow control.",
    "Throttling.User": "Request was denied due to user flow control.",
    "Throttling.Api": "Request was denied due to api flow control.",
    "InternalError": "The request processing has failed due to some unknown error, exception or failure.",
    "InvalidAccessKeyId.NotFound": "Specified access key is not found.",
    "InvalidAccessKeyId.Inactive": "Specified access key is disabled.",
    "SignatureDoesNotMatch": "Specified signature is not matched with our calculation.",
    "IncompleteSignature": "The request signature does not conform to Aliyun standards.",
    "SignatureNonceUsed": "Specified signature nonce was used already.",
    "InvalidTimeStamp.Expired": "Specified time stamp or date value is expired.",
    "InvalidTimeStamp.Format": "Specified time stamp or date value is not well formatted.",
    "MissingParameter": "%s is mandatory for this action.",
    "InvalidApi.NotFound": "Specified api is not found, please check your url and method.",
    "InvalidAction.NotFound": "Specified api is not found, please check your url and method.",
    "Forbidden.RAM": (
        "User not authorized to operate on the specified resource, or this API doesn't support RAM."
    ),
    "NoPermission": "You are not authorized to do this operation. Action: ehpc:%s",
    "InvalidSecurityToken.Expired": "Specified SecurityToken is expired.",
    "InvalidSecurityToken.Malformed": "Specified SecurityToken is malformed.",
    # Other E-HPC Instant codes (AddImage page); injectable for completeness.
    "ImageAlreadyExists": "The image already exists.",
    "InDebt": "Your account has overdue payments.",
    "ImageInUse": "The image is in use.",
}

# The "Error codes" table of the GetImage reference (/work/shared/seed/GetImage-api-reference.txt),
# row by row in its order.
SEED_STATUSES: dict[str, int] = {
    "InvalidParams": 400,
    "NotEnabled": 400,
    "ImageNotFound": 404,
    "ServiceUnavailable": 503,
    "EcsError": 406,
    "AliyunError": 406,
    "DbError": 406,
    "NotAuthorized": 407,
}

# The gateway's common codes (alibaba-openapi.md §4.2), row by row; a row naming two codes gives both.
GATEWAY_STATUSES: dict[str, int] = {
    "Throttling": 400,
    "Throttling.User": 400,
    "Throttling.Api": 400,
    "ServiceUnavailable": 503,
    "InternalError": 500,
    # "404 (live captures; older docs say 400)": the live answer wins.
    "InvalidAccessKeyId.NotFound": 404,
    "InvalidAccessKeyId.Inactive": 400,
    "SignatureDoesNotMatch": 400,
    "IncompleteSignature": 400,
    "SignatureNonceUsed": 400,
    "InvalidTimeStamp.Expired": 400,
    "InvalidTimeStamp.Format": 400,
    "MissingParameter": 400,
    "InvalidApi.NotFound": 404,
    "InvalidAction.NotFound": 404,
    "Forbidden.RAM": 403,
    "NoPermission": 403,
    # "400 [U status]" in the doc: unconfirmed, but the only status on record.
    "InvalidSecurityToken.Expired": 400,
    "InvalidSecurityToken.Malformed": 400,
}

# Other E-HPC Instant codes, from the AddImage page (alibaba-openapi.md §4.3, last line).
OTHER_PRODUCT_STATUSES: dict[str, int] = {
    "ImageAlreadyExists": 400,
    "InDebt": 400,
    "ImageInUse": 403,
}

STATUSES: dict[str, int] = {**SEED_STATUSES, **GATEWAY_STATUSES, **OTHER_PRODUCT_STATUSES}

# Codes whose real answers carry an AccessDeniedDetail object (alibaba-openapi.md §4.1).
PERMISSION_CODES = frozenset({"NotAuthorized", "Forbidden.RAM", "NoPermission"})

# Answered with an unknown code (injected by hand): a client error is the least surprising status.
DEFAULT_STATUS = 400


def status_of(code: str) -> int:
    """The HTTP status the simulator answers ``code`` with."""
    return STATUSES.get(code, DEFAULT_STATUS)


def message_of(code: str, detail: str = "") -> str:
    """The documented message of ``code``, with ``%s`` filled by ``detail`` (or ``detail`` appended)."""
    template = MESSAGES.get(code, "An error occurred.")
    if "%s" in template:
        return template.replace("%s", detail or "")
    return f"{template} {detail}" if detail else template


def is_known(code: str) -> bool:
    """Whether ``code`` is in the catalogue (used to reject typos in fault configuration)."""
    return code in STATUSES


# ----- STS (API 2015-04-01) ------------------------------------------------------------------------
# The one table of the simulated STS's own codes: code -> (HTTP status, message, source). Codes not
# here (signature, AccessKey, timestamp, nonce, SecurityToken, Throttling) are the gateway's above.
# [U] marks what no source fixed; the choice made is the closest documented analogue.
STS_API_VERSION = "2015-04-01"
STS_ACTIONS = frozenset({"AssumeRole", "AssumeRoleWithOIDC"})
STS_HOST_ID = "sts.aliyuncs.com"
STS_PRODUCT = "Sts"
_MISSING_COMMON = "alibaba-openapi.md §4.2 Missing{Param}; the STS FAQ's MissingSecurityToken has this shape"
_MISSING_ACTION = (
    "AssumeRoleWithSAML error table (MissingParameter.RoleArn, 400); RRSA runbooks (.OIDCProviderArn)"
)
_ASSUME_ROLE_DOC = "AssumeRole API reference, error codes table"
_RRSA_DOC = "ACK RRSA guide, 'SDK error messages' table (code and message; no status given)"
_SAML_STATUS = "[U status] 401 as the AssumeRoleWithSAML table gives AuthenticationFail.SAMLAssertion.*"
STS_ERRORS: dict[str, tuple[int, str, str]] = {
    **{
        f"Missing{name}": (400, "%s is mandatory for this action.", _MISSING_COMMON)
        for name in (
            "Action",
            "Version",
            "AccessKeyId",
            "Signature",
            "SignatureMethod",
            "SignatureVersion",
            "SignatureNonce",
            "Timestamp",
        )
    },
    **{
        f"MissingParameter.{name}": (400, "Parameter %s is required.", _MISSING_ACTION)
        for name in ("RoleArn", "RoleSessionName", "OIDCProviderArn", "OIDCToken")
    },
    "InvalidParameter.RoleArn": (400, "The parameter RoleArn is wrongly formed.", _ASSUME_ROLE_DOC),
    "InvalidParameter.RoleSessionName": (
        400,
        "The parameter RoleSessionName is wrongly formed.",
        _ASSUME_ROLE_DOC + "; STS FAQ: ^[a-zA-Z0-9.@-_]+$, 2-32 characters",
    ),
    "InvalidParameter.DurationSeconds": (
        400,
        "The Min/Max value of DurationSeconds is 15min/1hr.",
        _ASSUME_ROLE_DOC + " (900 to the role's MaxSessionDuration)",
    ),
    "InvalidParameter.ExternalId": (400, "The parameter ExternalId is wrongly formed.", _ASSUME_ROLE_DOC),
    "InvalidParameter.PolicyGrammar": (
        400,
        "The parameter Policy has not passed grammar check.",
        _ASSUME_ROLE_DOC,
    ),
    "InvalidParameter.OIDCProviderArn": (
        400,
        "The parameter OIDCProviderArn is wrongly formed.",
        "[U] by analogy with InvalidParameter.RoleArn",
    ),
    "NoPermission": (
        403,
        "You are not authorized to do this action. You should be authorized by RAM.",
        _ASSUME_ROLE_DOC + " (the role's trust policy does not admit the caller, or ExternalId differs)",
    ),
    "EntityNotExist.Role": (
        404,
        "The role not exists: %s.",
        _ASSUME_ROLE_DOC + " (404); message as the RRSA guide quotes it",
    ),
    # Two documented messages: STS_NO_SUCH_PROVIDER and STS_NO_TRUST below.
    "AuthenticationFail.NoPermission": (403, "%s", _RRSA_DOC + "; [U status] 403 like NoPermission"),
    "AuthenticationFail.OIDCToken.Invalid": (
        401,
        "The OIDC Token is invalid.",
        "code: alibabacloud-credentials' own integration tests (a garbage token); [U message]; "
        + _SAML_STATUS,
    ),
    "AuthenticationFail.OIDCToken.Expired": (
        401,
        "This JsonWebToken is expired.",
        _RRSA_DOC + "; " + _SAML_STATUS,
    ),
    "AuthenticationFail.OIDCToken.IssuerNotMatch": (
        401,
        "The issuer in the OIDC Token doesn't match the OIDC Provider registered.",
        _RRSA_DOC + "; " + _SAML_STATUS,
    ),
    "AuthenticationFail.OIDCToken.AudienceNotMatch": (
        401,
        "Invalid audience.",
        _RRSA_DOC + "; " + _SAML_STATUS,
    ),
    "InternalError": (
        500,
        "STS Server Internal Error happened, please send the RequestId to us.",
        _ASSUME_ROLE_DOC,
    ),
}
STS_NO_SUCH_PROVIDER = "No such OIDC Provider registered."
STS_NO_TRUST = "There is no permission."


def sts_status_of(code: str) -> int:
    """The HTTP status the simulated STS answers ``code`` with (its table, then the gateway's)."""
    entry = STS_ERRORS.get(code)
    return entry[0] if entry is not None else status_of(code)


def sts_message_of(code: str, detail: str = "") -> str:
    """The STS message of ``code`` (``%s`` filled by ``detail``), else the gateway's."""
    entry = STS_ERRORS.get(code)
    if entry is None:
        return message_of(code, detail)
    template = entry[1]
    if "%s" in template:
        return template.replace("%s", detail or "")
    return f"{template} {detail}" if detail else template
