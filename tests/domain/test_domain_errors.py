"""Domain errors carry what the HTTP layer needs for problem+json."""

from __future__ import annotations

from minichat_host.domain.errors import ContextBudgetExceeded, DomainError, InputTooLong, QuotaExceeded


def test_quota_exceeded() -> None:
    err = QuotaExceeded("web_search")
    assert (err.status, err.code, err.title, err.detail) == (
        429,
        "quota_exceeded",
        "quota_exceeded",
        "quota_exceeded",
    )
    assert err.scope == "web_search"
    assert err.extra == {"quota_scope": "web_search"}
    assert isinstance(err, DomainError)


def test_subclass_defaults_and_custom_detail() -> None:
    err = ContextBudgetExceeded("too big")
    assert (err.status, err.code, err.detail, str(err)) == (
        422,
        "context_budget_exceeded",
        "too big",
        "too big",
    )
    assert InputTooLong().detail == InputTooLong.default_title
    assert (InputTooLong().status, InputTooLong().code) == (422, "input_too_long")


def test_base_error_overrides() -> None:
    err = DomainError("chat x", status=404, code="chat_not_found", title="Chat Not Found", extra={"a": 1})
    assert (err.status, err.code, err.title, err.detail, err.extra) == (
        404,
        "chat_not_found",
        "Chat Not Found",
        "chat x",
        {"a": 1},
    )
    assert "chat_not_found" in repr(err)
