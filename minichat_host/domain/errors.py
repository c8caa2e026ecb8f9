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


# --- chats, messages, reactions, models (the chat REST API) ------------------------------------------
class ChatNotFound(DomainError):
    """The chat does not exist, is deleted, or belongs to another tenant or user (never 403: masking)."""

    default_status = 404
    default_code = "chat_not_found"
    default_title = "Chat Not Found"


class MessageNotFound(DomainError):
    """The message does not exist in this chat, is deleted, or is not visible."""

    default_status = 404
    default_code = "message_not_found"
    default_title = "Message Not Found"


class ModelNotFound(DomainError):
    """The model id is not in the caller's catalog, or is disabled (GET /models/{id})."""

    default_status = 404
    default_code = "model_not_found"
    # The original sends the token as the title.
    default_title = "model_not_found"


class InvalidModel(DomainError):
    """A chat was created with an unknown, disabled or empty model id (or no model is enabled at all)."""

    default_status = 400
    default_code = "invalid_model"
    default_title = "Invalid Model"


class ValidationFailed(DomainError):
    """A well-typed request value breaks a rule (blank or over-long title, unknown reaction value)."""

    default_status = 400
    default_code = "validation_error"
    default_title = "Validation Error"


class InvalidReactionTarget(DomainError):
    """Reactions are accepted on assistant messages only."""

    default_status = 400
    default_code = "invalid_reaction_target"
    default_title = "Invalid Reaction Target"


class InvalidListQuery(DomainError):
    """A list query the pagination rules reject (422, as the original's OData errors): the instance's
    `code` says which part — `invalid_limit`, `invalid_cursor`, `invalid_orderby` or `invalid_filter`."""

    default_status = 422
    default_code = "invalid_query"
    default_title = "Invalid Query"


class PolicyUnavailable(DomainError):
    """The model policy plugin failed or timed out, so the catalog or the user's limits are unknown."""

    default_status = 503
    default_code = "service_unavailable"
    default_title = "Service Unavailable"
