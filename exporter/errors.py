"""The one typed error of the E-HPC Instant API, and the catalogue of codes it can carry.

A leaf of the layers (pyproject.toml): the ingestion gate, the credentials, the client and the
self-metrics all raise or count it, so it lives below all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Error codes documented for GetImage (seed API reference), with their HTTP status.
SEED_CODES: dict[str, int] = {
    "InvalidParams": 400,
    "NotEnabled": 400,
    "ImageNotFound": 404,
    "ServiceUnavailable": 503,
    "EcsError": 406,
    "AliyunError": 406,
    "DbError": 406,
    "NotAuthorized": 407,
}

# Codes the OpenAPI gateway answers for any product (alibaba-openapi.md §4.2).
GATEWAY_CODES: dict[str, int] = {
    "Throttling": 400,
    "Throttling.User": 400,
    "Throttling.Api": 400,
    "InternalError": 500,
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
    "InvalidSecurityToken.Expired": 400,
    "InvalidSecurityToken.Malformed": 400,
}

# Failures that never got an API error body. http_status is unknown for these, so it is 0.
TIMEOUT = "Timeout"
CONNECTION_ERROR = "ConnectionError"
INVALID_RESPONSE = "InvalidResponse"
CREDENTIAL_ERROR = "CredentialError"
LOCAL_CODES: tuple[str, ...] = (TIMEOUT, CONNECTION_ERROR, INVALID_RESPONSE, CREDENTIAL_ERROR)
# The label value of every error code past ``limits.max_error_codes`` new ones (the catalogue is exempt),
# always with http_status "0": one series per action, there from the start, so an alert on it works
# before the first overflow. The real code and status are in the log line of the failure.
OVERFLOW_CODE = "OtherError"

# Every code the exporter pre-registers at 0, with the HTTP status it is normally seen with.
KNOWN_CODES: dict[str, int] = {
    **SEED_CODES,
    **GATEWAY_CODES,
    **dict.fromkeys(LOCAL_CODES, 0),
    OVERFLOW_CODE: 0,
}

# Never retried: retrying cannot change the answer and may lock the key out (alibaba-openapi.md §4.4).
_NEVER_RETRY_PREFIXES = (
    "Signature",
    "IncompleteSignature",
    "InvalidAccessKeyId",
    "InvalidSecurityToken",
    "InvalidTimeStamp",
    "Forbidden",
    "NoPermission",
    "NotAuthorized",
    "NotEnabled",
    "InvalidParams",
    "MissingParameter",
    "Invalid",
    "ImageNotFound",
    CREDENTIAL_ERROR,
)


def is_retryable(code: str, http_status: int) -> bool:
    """Throttling, server-side and transport failures are retried; caller mistakes never are."""
    if code.startswith(_NEVER_RETRY_PREFIXES) and code != INVALID_RESPONSE:
        return False
    if code.startswith("Throttling") or code in {"ServiceUnavailable", "InternalError"}:
        return True
    if code in {TIMEOUT, CONNECTION_ERROR, INVALID_RESPONSE}:
        return True
    return http_status >= 500


@dataclass(eq=False)
class ApiError(Exception):
    """A failed API call: an error body from the server, or a local transport/credential failure."""

    code: str
    message: str
    http_status: int = 0
    request_id: str | None = None
    action: str | None = None
    retry_after: float | None = None  # seconds, from x-acs-retry-after

    def __post_init__(self) -> None:
        super().__init__(self.code, self.message)

    @property
    def retryable(self) -> bool:
        """Whether a fresh attempt may succeed."""
        return is_retryable(self.code, self.http_status)

    def __str__(self) -> str:
        rid = f" request_id={self.request_id}" if self.request_id else ""
        status = f" http_status={self.http_status}" if self.http_status else ""
        return f"{self.code}:{status}{rid} {self.message}"
