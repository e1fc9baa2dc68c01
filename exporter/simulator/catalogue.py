"""The error codes the simulator can answer, with their HTTP status and the message the cloud sends."""

from __future__ import annotations

from exporter.openapi.errors import GATEWAY_CODES, SEED_CODES

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

STATUSES: dict[str, int] = {
    **SEED_CODES,
    **GATEWAY_CODES,
    "ImageAlreadyExists": 400,
    "InDebt": 400,
    "ImageInUse": 403,
}

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
