"""The error taxonomy.

Every failure that leaves bastion is one of three families, and each class knows its HTTP
status, its OpenAI-style ``type`` and ``code``, and whether a client may retry it:

- user errors (``UserError``): the request itself is wrong or not allowed. Never retried.
- dependency errors (``DependencyError``): an upstream model, store or queue failed. Some are
  transient (timeouts, 429, 5xx) and are retried by the pipeline before they ever reach a client.
- internal errors (``InternalError``): our own bug. The client gets a safe message and an
  incident id that appears in the logs; never a stack trace.

The request id is attached when the error is rendered, so any layer may raise these freely.
"""

from __future__ import annotations

import secrets
from typing import Any


class BastionError(Exception):
    """Base of the taxonomy. Subclasses set the class attributes; instances carry the detail."""

    status: int = 500
    type: str = "internal_error"
    code: str = "internal_error"
    retryable: bool = False
    family: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The OpenAI error shape: ``{"error": {message, type, param, code, ...}}``."""
        err: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
            "retryable": self.retryable,
            "request_id": request_id,
        }
        if self.extra:
            err.update(self.extra)
        return {"error": err}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


# --------------------------------------------------------------------------- user errors


class UserError(BastionError):
    family = "user"
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(UserError):
    """Malformed JSON, a schema violation, or a value out of range. ``param`` names the field."""


class Unauthenticated(UserError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(UserError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(UserError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(UserError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(UserError):
    status = 413
    code = "payload_too_large"


class TenantLimitExceeded(UserError):
    """The tenant is over a rate limit or budget of its own: waiting helps, retrying now does not."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(TenantLimitExceeded):
    """The request's worst-case cost does not fit what is left of a budget. Not transient
    within the period, hence 402 rather than 429."""

    status = 402
    type = "insufficient_quota"
    code = "budget_exceeded"


class IdempotencyKeyReused(UserError):
    """The same ``Idempotency-Key`` came with a different body: a client bug, never a replay."""

    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"


class Overloaded(BastionError):
    """Shed at admission: the process is at capacity for this priority. Retry after a moment.
    Not the caller's fault and not an upstream's: bastion's own capacity, so it is retryable."""

    family = "dependency"
    retryable = True
    status = 503
    type = "overloaded_error"
    code = "overloaded"


class PolicyBlocked(UserError):
    status = 403
    type = "policy_error"
    code = "policy_blocked"


class DeadlineExceeded(UserError):
    """The request's own deadline ran out. Classified as a 504 because the work did not finish."""

    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class ClientClosedRequest(UserError):
    """The client went away; nothing is sent, but the status is recorded (nginx's 499)."""

    status = 499
    type = "client_closed_request"
    code = "client_closed_request"


# --------------------------------------------------------------------------- dependency errors


class DependencyError(BastionError):
    family = "dependency"
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retryable = True

    def __init__(self, message: str, *, upstream_status: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.upstream_status = upstream_status

    @property
    def transient(self) -> bool:
        """Whether the pipeline may try this target again."""
        return self.retryable


class UpstreamTimeout(DependencyError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamConnectError(DependencyError):
    status = 502
    code = "upstream_connect_error"


class UpstreamUnavailable(DependencyError):
    status = 503
    code = "upstream_unavailable"


class UpstreamRateLimited(DependencyError):
    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"


class UpstreamMalformed(DependencyError):
    """The upstream answered, but not with something we can parse. Retried: often transient."""

    code = "upstream_malformed_response"


class UpstreamRejected(DependencyError):
    """The upstream refused the request itself (400/401/403/404/422): retrying cannot help."""

    retryable = False
    code = "upstream_rejected"

    def __init__(self, message: str, *, upstream_status: int | None = None, **kw: Any) -> None:
        super().__init__(message, upstream_status=upstream_status, **kw)
        # The upstream judged the request itself: relay its 4xx so the caller sees its own fault.
        # Our own credentials being refused is our problem, not the caller's: keep that a 502.
        if upstream_status in (401, 403):
            self.code = "upstream_auth_failed"
        elif upstream_status is not None and 400 <= upstream_status < 500:
            self.status = upstream_status
            self.type = "invalid_request_error"


class BulkheadFull(DependencyError):
    status = 503
    type = "overloaded_error"
    code = "bulkhead_full"


class CircuitOpen(DependencyError):
    status = 503
    code = "circuit_open"


class AllTargetsFailed(DependencyError):
    """Every target of the fallback chain failed; ``last`` is the failure that ended the chain."""

    def __init__(self, message: str, *, last: BastionError | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.last = last
        if last is not None:
            self.status = last.status
            self.type = last.type
            self.code = last.code
            self.retry_after = last.retry_after


class ContractViolation(DependencyError):
    """One target's answer broke the output contract, and so did its repair. Not retried on
    that target (the next target may do better); never reaches a client on its own."""

    retryable = False
    code = "output_contract_violated"

    def __init__(self, message: str, *, violations: list[Any] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.violations = violations or []


class OutputContractFailed(DependencyError):
    """The safe refusal: no target produced an answer that satisfies the output contract.

    Carries the validation summary and an incident id that also appears in the logs."""

    status = 502
    type = "output_contract_failed"
    code = "output_contract_failed"
    retryable = False

    def __init__(self, message: str, *, violations: list[str], incident_id: str | None = None,
                 **kw: Any) -> None:
        self.incident_id = incident_id or new_incident_id()
        super().__init__(f"{message} (incident {self.incident_id})",
                         extra={"incident_id": self.incident_id, "violations": violations}, **kw)
        self.violations = violations


class StreamInterrupted(DependencyError):
    """A stream failed after bytes reached the client: reported in-band, never retried."""

    retryable = False
    code = "stream_interrupted"


# --------------------------------------------------------------------------- internal errors


class InternalError(BastionError):
    family = "internal"
    status = 500
    type = "internal_error"
    code = "internal_error"

    def __init__(self, message: str = "internal error", *, incident_id: str | None = None,
                 **kw: Any) -> None:
        self.incident_id = incident_id or new_incident_id()
        super().__init__(
            f"{message} (incident {self.incident_id})",
            extra={"incident_id": self.incident_id},
            **kw,
        )


def outcome_of(error: BaseException | None) -> str:
    """How something ended, as logs, metrics and the ledger name it: ``ok``, the taxonomy's
    error code, ``cancelled`` (the task was cancelled) or ``internal_error`` (a bug)."""
    if error is None:
        return "ok"
    if isinstance(error, BastionError):
        return error.code
    return "cancelled" if not isinstance(error, Exception) else "internal_error"


def new_incident_id() -> str:
    return "inc_" + secrets.token_hex(8)


#: Upstream HTTP statuses that are worth another attempt.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 529})


def error_for_upstream_status(
    status: int, message: str, *, retry_after: float | None = None
) -> DependencyError:
    """Classify an upstream HTTP error status into the taxonomy."""
    if status == 429:
        return UpstreamRateLimited(message, upstream_status=status, retry_after=retry_after)
    if status in (408, 504):
        return UpstreamTimeout(message, upstream_status=status, retry_after=retry_after)
    if status in TRANSIENT_STATUSES or status >= 500:
        return UpstreamUnavailable(message, upstream_status=status, retry_after=retry_after)
    return UpstreamRejected(message, upstream_status=status)
