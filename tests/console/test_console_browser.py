"""The web console end to end in headless Chromium against the real app (SQLite, local model).

Screenshots are saved under `$MINICHAT_TEST_ARTIFACTS` (default: a pytest temporary directory), one per
step worth seeing plus the final state of every test (conftest.py).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from console.browser import ServedApp
from minichat_host.providers.local import CLOSING_SENTENCE, LABEL

API = "/mini-chat/v1"
CHAT_PAGE_SIZE = 20  # app.js
STREAMING_BODY = '#messages li[data-streaming="true"] .msg-body'
LAST_ASSISTANT_BODY = "#messages li.msg-assistant:last-child .msg-body"

# Records every length the streaming reply's text takes, so a test can tell tokens that arrive one by one
# from a reply that appears at once.
RECORD_STREAM_LENGTHS = """() => {
  window.__streamLengths = [];
  const observer = new MutationObserver(() => {
    const body = document.querySelector('#messages li[data-streaming="true"] .msg-body');
    if (body) window.__streamLengths.push(body.textContent.length);
  });
  const options = {subtree: true, childList: true, characterData: true};
  observer.observe(document.getElementById("messages"), options);
}"""


def expected_reply(message: str) -> str:
    return f"{LABEL} You said: {message} {CLOSING_SENTENCE}"


def open_console(page: Any, app: ServedApp, fragment: str = "") -> Any:
    response = page.goto(f"{app.base_url}/{fragment}")
    page.wait_for_selector("body[data-ready=true]")
    return response


def api_get(page: Any, app: ServedApp, path: str) -> Any:
    response = page.request.get(f"{app.base_url}{API}{path}")
    assert response.ok, response.text()
    return response.json()


def create_chat(page: Any, model_id: str | None = None, title: str | None = None) -> str:
    """Creates a chat through the form; returns its id (from the URL fragment)."""
    if model_id is not None:
        page.select_option("#new-chat-model", model_id)
    if title is not None:
        page.fill("#new-chat-title", title)
    page.click("#new-chat-button")
    page.wait_for_url("**/#/chats/*")
    page.wait_for_selector("#chat-view:not([hidden])")
    chat_id: str = page.url.rsplit("/", 1)[1]
    return chat_id


def send(page: Any, text: str) -> None:
    page.fill("#message-input", text)
    page.click("#send-button")


def wait_turn_finished(page: Any) -> None:
    """The stream ended and the chat was reloaded: the last-turn actions are back."""
    page.wait_for_selector("#turn-actions:not([hidden])")
    page.wait_for_selector("#stop-button", state="hidden")


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def test_page_is_served_with_strict_headers(page: Any, console_app: ServedApp) -> None:
    response = open_console(page, console_app)
    headers = response.headers
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    script = page.request.get(f"{console_app.base_url}/console/app.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    style = page.request.get(f"{console_app.base_url}/console/style.css")
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    # The model choice comes from /v1/models.
    models = [m["model_id"] for m in api_get(page, console_app, "/models")["items"]]
    options = page.eval_on_selector_all("#new-chat-model option", "options => options.map(o => o.value)")
    assert options == models


def test_send_message_streams_tokens(page: Any, console_app: ServedApp, artifacts_dir: Path) -> None:
    open_console(page, console_app)
    chat_id = create_chat(page, title="Streaming")
    page.evaluate(RECORD_STREAM_LENGTHS)
    message = "Hello from the browser"
    send(page, message)
    # Part of the reply is on screen while the stream runs (recorded, so a slow poll cannot miss it).
    page.wait_for_function("() => window.__streamLengths.some((n) => n > 20)")
    shot(page, artifacts_dir, "send-streaming")
    wait_turn_finished(page)
    shot(page, artifacts_dir, "send-done")

    final = page.text_content(LAST_ASSISTANT_BODY)
    assert final == expected_reply(message)
    lengths: list[int] = page.evaluate("window.__streamLengths")
    partial = sorted({n for n in lengths if 0 < n < len(final)})
    # Tokens arrived one after another: several distinct partial lengths were rendered before the end.
    assert len(partial) >= 3, lengths
    assert lengths == sorted(lengths), "the streamed text only grows"
    # The reply is stored and the chat list shows the chat with its two messages.
    messages = api_get(page, console_app, f"/chats/{chat_id}/messages")["items"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == final
    page.wait_for_selector(f'#chat-list a[data-chat-id="{chat_id}"]:has-text("2 messages")')


def test_stop_cancels_the_turn(page: Any, console_app: ServedApp, artifacts_dir: Path) -> None:
    open_console(page, console_app)
    chat_id = create_chat(page, title="Stop me")
    message = " ".join(f"word{i}" for i in range(50))
    send(page, message)
    # Two words in (of about 75): Stop lands long before the reply could end.
    page.wait_for_function(
        f"() => (document.querySelector('{STREAMING_BODY}')?.textContent.length ?? 0) >= 14"
    )
    assert page.is_visible("#stop-button")
    page.click("#stop-button")
    settled = page.wait_for_selector("#messages li[data-turn-state]")
    shot(page, artifacts_dir, "stop-cancelled")
    assert settled.get_attribute("data-turn-state") == "cancelled"
    assert "cancelled" in (settled.text_content() or "")
    assert page.is_hidden("#stop-button")
    assert page.is_enabled("#send-button")

    messages = api_get(page, console_app, f"/chats/{chat_id}/messages")["items"]
    request_id = messages[0]["request_id"]
    turn = api_get(page, console_app, f"/chats/{chat_id}/turns/{request_id}")
    assert turn["state"] == "cancelled"
    # The partial reply is kept, and it is a strict prefix of what the full reply would have been.
    assistant = [m for m in messages if m["role"] == "assistant"]
    assert len(assistant) == 1
    partial = assistant[0]["content"]
    full = expected_reply(message)
    assert partial and len(partial) < len(full)
    assert full.startswith(partial.rstrip())


def test_upload_shows_ready_and_is_sent_with_the_message(
    page: Any, console_app: ServedApp, artifacts_dir: Path
) -> None:
    open_console(page, console_app)
    chat_id = create_chat(page, title="Files")
    notes = b"The launch of the aurora project is planned for the second week of March.\n"
    page.set_input_files(
        "#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": notes}]
    )
    ready = page.wait_for_selector('#pending-attachments li[data-status="ready"]')
    assert "notes.txt" in (ready.text_content() or "")
    shot(page, artifacts_dir, "upload-ready")

    send(page, "When is the aurora launch planned?")
    wait_turn_finished(page)
    shot(page, artifacts_dir, "upload-answered")
    assert page.query_selector_all("#pending-attachments li") == []
    user_attachments = page.text_content("#messages li.msg-user .msg-attachments") or ""
    assert "notes.txt" in user_attachments
    messages = api_get(page, console_app, f"/chats/{chat_id}/messages")["items"]
    assert [a["filename"] for a in messages[0]["attachments"]] == ["notes.txt"]
    assert "aurora" in (page.text_content(LAST_ASSISTANT_BODY) or "")


def test_quota_bar_changes_after_a_turn(page: Any, console_app: ServedApp, artifacts_dir: Path) -> None:
    open_console(page, console_app)
    bar = '.quota-row[data-tier="total"][data-period="daily"] progress'
    page.wait_for_selector(bar)
    before = int(page.get_attribute(bar, "data-used") or "0")
    create_chat(page, model_id="local-standard", title="Quota")
    assert "Local Standard" in (page.text_content("#chat-meta") or "")
    send(page, "How much does this cost?")
    wait_turn_finished(page)
    page.wait_for_function(
        f"() => Number(document.querySelector('{bar}')?.dataset.used) > {before}", polling=100
    )
    shot(page, artifacts_dir, "quota-after-turn")
    used = int(page.get_attribute(bar, "data-used") or "0")
    status = api_get(page, console_app, "/quota/status")
    total_daily = next(
        period
        for tier in status["tiers"]
        if tier["tier"] == "total"
        for period in tier["periods"]
        if period["period"] == "daily"
    )
    assert used == total_daily["used_credits_micro"] > before
    assert page.get_attribute(bar, "value") == str(used)


def test_reactions_retry_edit_and_delete(page: Any, console_app: ServedApp, artifacts_dir: Path) -> None:
    open_console(page, console_app)
    chat_id = create_chat(page, title="Turn actions")
    send(page, "first version")
    wait_turn_finished(page)

    like = "#messages li.msg-assistant .reaction-like"
    page.click(like)
    page.wait_for_selector(f'{like}[aria-pressed="true"]')
    assert api_get(page, console_app, f"/chats/{chat_id}/messages")["items"][1]["my_reaction"] == "like"
    page.click("#messages li.msg-assistant .reaction-dislike")
    page.wait_for_selector('#messages li.msg-assistant .reaction-dislike[aria-pressed="true"]')
    assert page.get_attribute(like, "aria-pressed") == "false"
    page.click("#messages li.msg-assistant .reaction-dislike")
    page.wait_for_selector('#messages li.msg-assistant .reaction-dislike[aria-pressed="false"]')
    assert api_get(page, console_app, f"/chats/{chat_id}/messages")["items"][1]["my_reaction"] is None

    first_request = api_get(page, console_app, f"/chats/{chat_id}/messages")["items"][0]["request_id"]
    page.click("#retry-turn")
    wait_turn_finished(page)
    retried = api_get(page, console_app, f"/chats/{chat_id}/messages")["items"]
    assert len(retried) == 2 and retried[0]["request_id"] != first_request
    assert page.text_content(LAST_ASSISTANT_BODY) == expected_reply("first version")

    page.click("#edit-turn")
    page.fill("#edit-input", "second version")
    page.click("#edit-form button[type=submit]")
    wait_turn_finished(page)
    shot(page, artifacts_dir, "turn-edited")
    assert page.text_content("#messages li.msg-user .msg-body") == "second version"
    assert page.text_content(LAST_ASSISTANT_BODY) == expected_reply("second version")

    page.click("#delete-turn")
    page.wait_for_function("() => document.querySelectorAll('#messages li').length === 0")
    assert api_get(page, console_app, f"/chats/{chat_id}/messages")["items"] == []
    assert page.is_hidden("#turn-actions")


def test_chat_list_is_newest_first_and_pages(page: Any, console_app: ServedApp) -> None:
    for index in range(CHAT_PAGE_SIZE + 3):
        created = page.request.post(
            f"{console_app.base_url}{API}/chats", data={"title": f"Paged {index:02d}"}
        )
        assert created.status == 201, created.text()
    open_console(page, console_app)
    first_page = page.eval_on_selector_all("#chat-list a", "links => links.map(a => a.dataset.chatId)")
    assert len(first_page) == CHAT_PAGE_SIZE
    assert page.text_content("#chat-list li:first-child .chat-name") == f"Paged {CHAT_PAGE_SIZE + 2:02d}"
    page.click("#more-chats")
    page.wait_for_function(f"() => document.querySelectorAll('#chat-list a').length > {CHAT_PAGE_SIZE}")
    shown = page.eval_on_selector_all("#chat-list a", "links => links.map(a => a.dataset.chatId)")
    everything: list[str] = []
    cursor = ""
    while True:
        listing = api_get(page, console_app, f"/chats?limit=100&cursor={cursor}")
        everything += [chat["id"] for chat in listing["items"]]
        cursor = listing["page_info"]["next_cursor"]
        if not cursor:
            break
    assert shown == everything[: len(shown)]
    assert shown[:CHAT_PAGE_SIZE] == first_page


def test_problem_detail_is_shown(page: Any, console_app: ServedApp) -> None:
    missing = uuid.uuid4()
    open_console(page, console_app, f"#/chats/{missing}")
    alert = page.wait_for_selector("#alert:not([hidden])")
    problem = page.request.get(f"{console_app.base_url}{API}/chats/{missing}")
    assert problem.status == 404
    assert problem.json()["detail"] in (alert.text_content() or "")
    assert page.is_visible("#no-chat")


def test_outbox_page_against_the_server(page: Any, console_app: ServedApp, artifacts_dir: Path) -> None:
    open_console(page, console_app, "#/outbox")
    probe = page.request.get(f"{console_app.base_url}{API}/admin/outbox/status")
    if probe.status == 404:
        unavailable = page.wait_for_selector("#outbox-unavailable:not([hidden])")
        assert "not available" in (unavailable.text_content() or "")
    else:
        assert probe.ok, probe.text()
        page.wait_for_selector("#queue-table tbody tr[data-queue]")
    shot(page, artifacts_dir, "outbox-live")


def test_outbox_page_replays_and_discards(page: Any, console_app: ServedApp, artifacts_dir: Path) -> None:
    """The page against canned admin answers in the shape of `minichat outbox ... --json`."""
    partitions = [
        {
            "queue": "mini-chat.audit",
            "partition": 0,
            "backlog": 2,
            "dead_letters": 1,
            "last_error": "boom",
            "oldest_pending_age_seconds": 90.0,
        },
        {"queue": "mini-chat.audit", "partition": 1, "backlog": 3, "dead_letters": 0},
        {"queue": "mini-chat.usage_snapshot", "partition": 0, "backlog": 0, "dead_letters": 0},
    ]
    letters = [
        {
            "id": 7,
            "queue": "mini-chat.audit",
            "partition": 0,
            "seq": 3,
            "payload_type": "audit.turn",
            "attempts": 5,
            "failed_at": "2026-11-22T10:00:00Z",
            "last_error": "PermanentError: rejected",
            "status": "pending",
            "payload": "eyJhIjogMX0=",
        },
    ]
    actions: list[str] = []

    def answer(route: Any) -> None:
        url, method = route.request.url, route.request.method
        if method == "POST":
            actions.append(url.split("/admin/outbox/", 1)[1])
            route.fulfill(status=200, content_type="application/json", body=json.dumps({"ok": True}))
        elif url.endswith("/admin/outbox/status"):
            route.fulfill(status=200, content_type="application/json", body=json.dumps(partitions))
        else:
            route.fulfill(status=200, content_type="application/json", body=json.dumps({"items": letters}))

    page.route("**/mini-chat/v1/admin/outbox/**", answer)
    open_console(page, console_app, "#/outbox")
    audit_row = page.wait_for_selector('#queue-table tr[data-queue="mini-chat.audit"]')
    cells = [c.text_content() for c in audit_row.query_selector_all("td")]
    assert cells[:2] == ["2", "5"] and cells[3] == "1" and cells[4] == "boom"
    page.wait_for_selector('#dead-letter-table tr[data-dead-letter-id="7"]')
    assert '{"a": 1}' in (page.text_content('#dead-letter-table tr[data-dead-letter-id="7"] pre') or "")
    shot(page, artifacts_dir, "outbox-dead-letters")

    page.click("button[aria-label='Replay dead letter 7']")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('sent back')")
    page.click("button[aria-label='Discard dead letter 7']")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('discarded')")
    assert actions == ["dead-letters/7/replay", "dead-letters/7/discard"]


def test_outbox_page_degrades_when_the_admin_api_is_missing(page: Any, console_app: ServedApp) -> None:
    problem = {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "code": "not_found",
    }
    page.route(
        "**/mini-chat/v1/admin/outbox/**",
        lambda route: route.fulfill(
            status=404, content_type="application/problem+json", body=json.dumps(problem)
        ),
    )
    open_console(page, console_app, "#/outbox")
    unavailable = page.wait_for_selector("#outbox-unavailable:not([hidden])")
    assert "not available" in (unavailable.text_content() or "")
    assert page.is_hidden("#outbox-content")
    # Back to the chats page: it works as before.
    page.click("#nav-chats")
    page.wait_for_selector("#chat-page:not([hidden])")
    assert page.is_hidden("#outbox-page")
