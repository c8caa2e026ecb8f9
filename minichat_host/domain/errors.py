"""Domain errors: what went wrong, in terms the HTTP layer can map to problem+json without guessing.

Every error carries an HTTP-like `status` hint, a machine `code` (the problem's `code` member), a short
`title`, a human `detail` and optional `extra` members (e.g. `quota_scope`). Subclasses set the class
defaults; an instance may override any of them. New errors are added as new subclasses here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

QuotaScope = Literal["tokens", "web_search", "code_interpreter"]


class DomainError(Exception):
    """Base of every rule violation the domain reports to its caller."""

    default_status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"
    default_title: ClassVar[str] = "Bad Request"

    status: int
    code: str
    title: str
    detail: str
    extra: dict[str, Any]

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = self.default_status if status is None else status
        self.code = self.default_code if code is None else code
        self.title = self.default_title if title is None else title
        self.detail = self.title if detail is None else detail
        self.extra = dict(extra) if extra else {}
        super().__init__(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, detail={self.detail!r})"


class QuotaExceeded(DomainError):
    """No tier fits the reserve, or a daily tool quota is used up (429, nothing written)."""

    default_status = 429
    default_code = "quota_exceeded"
    # The original sends the token as title and detail; keep that for existing clients.
    default_title = "quota_exceeded"

    scope: QuotaScope

    def __init__(self, scope: QuotaScope, detail: str | None = None) -> None:
        self.scope = scope
        super().__init__(detail or "quota_exceeded", extra={"quota_scope": scope})


class ContextBudgetExceeded(DomainError):
    """The mandatory part of the context (instructions, current message, images) does not fit the model."""

    default_status = 422
    default_code = "context_budget_exceeded"
    default_title = "Context Budget Exceeded"


class InputTooLong(DomainError):
    """The message's token estimate exceeds the model's `max_input_tokens`."""

    default_status = 422
    default_code = "input_too_long"
    default_title = "Input Too Long"
