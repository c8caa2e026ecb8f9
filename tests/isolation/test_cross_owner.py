"""Every endpoint of the contract tried across the owner boundary (SPEC §4, original-api.md §1).

A owns chats, streamed turns, a reaction and attachments. B (same tenant, another user), C (another
tenant, the same user id as A) and D (another tenant, another user) try every route on A's resources,
directly and through their own chats. Each answer must have the contract's status (404 for anything not
owned, 422 for a foreign cursor or `$filter`), be problem+json with the right `code` when it is an error,
and carry no byte of A's data (ids, titles, file names, file text, message text). Afterwards A's rows are
exactly what they were, and A still sees all of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import databases
import msgspec

from isolation.world import (
    PROBLEM_JSON,
    Answer,
    Caller,
    OwnerWorld,
    owner_rows,
    sse_frames,
    text_file,
    used_credits,
)
from minichat_host.db.repos import chats as chats_repo
from minichat_host.db.repos.pagination import PageCursor, Position, encode_cursor, scope_fingerprint

INTRUDERS = ("B", "C", "D")


@dataclass(frozen=True)
class Probe:
    """One request and what the contract says it must get."""

    method: str
    path: str
    status: int | tuple[int, ...]
    codes: tuple[str, ...] = ()  # accepted problem `code`s when the answer is an error
    json: Any = None
    params: dict[str, str] | None = None
    form: Callable[[], aiohttp.FormData] | None = None

    def sent(self) -> str:
        """Everything the caller put into the request (an echo of it is not a leak)."""
        parts = [self.path, msgspec.json.encode(self.json).decode() if self.json is not None else ""]
        parts.extend((self.params or {}).values())
        return " ".join(parts)

    def label(self) -> str:
        query = f"?{self.params}" if self.params else ""
        return f"{self.method} {self.path}{query}"


async def check(caller: Caller, world: OwnerWorld, probes: list[Probe]) -> list[str]:
    """Run the probes as `caller`; every violation as one line (all are reported together).

    A probe that names A's resources is also sent with those ids replaced by ids that exist nowhere: both
    answers must have the same status and code, so the answer cannot tell that A's resource exists.
    """
    failures: list[str] = []
    for probe in probes:
        answer = await send(caller, probe)
        where = f"{caller.who.name}: {probe.label()}"
        allowed = probe.status if isinstance(probe.status, tuple) else (probe.status,)
        if answer.status not in allowed:
            failures.append(f"{where}: status {answer.status}, expected {allowed}: {answer.text[:300]}")
        if answer.status >= 400:
            failures.extend(problem_failures(where, answer, probe.codes))
        leaked = world.leaks(answer, probe.sent())
        if leaked:
            failures.append(f"{where}: leaks {leaked}: {answer.text[:300]}")
        twin = unknown_twin(probe, world)
        if twin is not None:
            twin_answer = await send(caller, twin)
            if (twin_answer.status, error_code(twin_answer)) != (answer.status, error_code(answer)):
                failures.append(
                    f"{where}: answers {answer.status} {error_code(answer)!r} but "
                    f"{twin_answer.status} {error_code(twin_answer)!r} for ids that do not exist"
                )
    return failures


async def send(caller: Caller, probe: Probe) -> Answer:
    return await caller.call(
        probe.method,
        probe.path,
        json=probe.json,
        params=probe.params,
        form=probe.form() if probe.form else None,
    )


def unknown_twin(probe: Probe, world: OwnerWorld) -> Probe | None:
    """The probe with every id of A's in its path replaced by a fresh one; None when it names none."""
    path = probe.path
    for name, value in world.secrets.items():
        if name.endswith("_id") or "_id[" in name:
            path = path.replace(value, str(uuid.uuid4()))
    return None if path == probe.path else dataclasses.replace(probe, path=path)


def error_code(answer: Answer) -> str | None:
    if answer.status < 400 or answer.content_type != PROBLEM_JSON:
        return None
    code = answer.json().get("code")
    return code if isinstance(code, str) else None


def problem_failures(where: str, answer: Answer, codes: tuple[str, ...]) -> list[str]:
    if answer.content_type != PROBLEM_JSON:
        return [f"{where}: error is {answer.content_type!r}, not problem+json"]
    body = answer.json()
    if codes and body.get("code") not in codes:
        return [f"{where}: code {body.get('code')!r}, expected one of {codes}"]
    return []


async def own_chat(caller: Caller, title: str = "my own chat") -> str:
    chat: dict[str, Any] = await caller.ok("POST", "/chats", status=201, json={"title": title})
    chat_id: str = chat["id"]
    return chat_id


async def assert_owner_untouched(
    database: databases.Database, world: OwnerWorld, before: dict[str, list[tuple[str, ...]]]
) -> None:
    """A's rows are unchanged and A still reads all of it through the API."""
    assert await owner_rows(database, world) == before
    owner = world.owner
    chat = await owner.ok("GET", f"/chats/{world.chat_id}")
    assert chat["title"] == world.secrets["title[0]"] and chat["message_count"] == 4
    listed = await owner.ok("GET", f"/chats/{world.chat_id}/messages")
    assert [m["id"] for m in listed["items"] if m["role"] == "assistant"] == world.assistant_message_ids
    assert listed["items"][1]["my_reaction"] == "like"
    attachment = await owner.ok("GET", f"/chats/{world.chat_id}/attachments/{world.spare_attachment_id}")
    assert attachment["status"] == "ready"
    for request_id in world.request_ids:
        turn = await owner.ok("GET", f"/chats/{world.chat_id}/turns/{request_id}")
        assert turn["state"] == "done"


def forged_chats_cursor(tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: str) -> str:
    """A well-formed chat-list cursor for the listing of (tenant, user), positioned just past `chat_id`."""
    position = Position(dt.datetime.now(dt.UTC) + dt.timedelta(days=1), uuid.UUID(chat_id))
    return encode_cursor(
        PageCursor("next", position),
        scope=scope_fingerprint("chats", tenant_id, user_id),
        order=chats_repo.ORDER_UPDATED_DESC,
    )


# --- chats: read, rename, delete, list, cursors, $filter --------------------------------------------------
async def test_chats_and_chat_lists(
    world: OwnerWorld, callers: dict[str, Caller], app_db: databases.Database
) -> None:
    before = await owner_rows(app_db, world)
    owner = world.owner.who
    failures: list[str] = []
    for name in INTRUDERS:
        caller = callers[name]
        mine = await own_chat(caller)
        chat = world.chat_id
        failures += await check(
            caller,
            world,
            [
                Probe("GET", f"/chats/{chat}", 404, ("chat_not_found",)),
                Probe("GET", f"/chats/{world.other_chat_ids[0]}", 404, ("chat_not_found",)),
                Probe("PATCH", f"/chats/{chat}", 404, ("chat_not_found",), json={"title": "taken over"}),
                Probe("DELETE", f"/chats/{chat}", 404, ("chat_not_found",)),
                Probe("DELETE", f"/chats/{world.other_chat_ids[1]}", 404, ("chat_not_found",)),
                Probe("GET", "/chats", 200),
                Probe("GET", "/chats", 200, params={"limit": "100", "$orderby": "updated_at asc"}),
                # A's own cursor replayed by someone else: refused (or at worst an empty page).
                Probe(
                    "GET", "/chats", (422, 200), ("invalid_cursor",), params={"cursor": world.chats_cursor}
                ),
                Probe(
                    "GET",
                    "/chats",
                    (422, 200),
                    ("invalid_cursor",),
                    params={"cursor": world.chats_cursor, "limit": "100"},
                ),
                # A cursor forged for A's listing (A's ids are not secret to a colleague): refused.
                Probe(
                    "GET",
                    "/chats",
                    422,
                    ("invalid_cursor",),
                    params={"cursor": forged_chats_cursor(owner.tenant_id, owner.user_id, chat)},
                ),
                # A cursor of the caller's own listing positioned at A's chat: only a position.
                Probe(
                    "GET",
                    "/chats",
                    200,
                    params={"cursor": forged_chats_cursor(caller.who.tenant_id, caller.who.user_id, chat)},
                ),
                Probe(
                    "GET",
                    "/chats",
                    422,
                    ("invalid_filter",),
                    params={"$filter": f"title eq '{world.secrets['title[0]']}'"},
                ),
                Probe(
                    "GET", "/chats", 422, ("invalid_filter",), params={"$filter": "contains(title,'alpha')"}
                ),
                Probe("GET", "/chats", 422, ("invalid_filter",), params={"$filter": f"id eq {chat}"}),
                Probe(
                    "GET",
                    f"/chats/{mine}/messages",
                    422,
                    ("invalid_filter",),
                    params={"$filter": "role eq 'assistant'"},
                ),
            ],
        )
        listed = await caller.ok("GET", "/chats", params={"limit": "100"})
        assert [item["id"] for item in listed["items"]] == [mine], f"{name} lists more than its own chat"
    assert not failures, "\n".join(failures)
    await assert_owner_untouched(app_db, world, before)
    listed = await world.owner.ok("GET", "/chats", params={"limit": "100"})
    assert {item["id"] for item in listed["items"]} == {world.chat_id, *world.other_chat_ids}


# --- messages and streaming -------------------------------------------------------------------------------
async def test_messages_and_streams(
    world: OwnerWorld, callers: dict[str, Caller], app_db: databases.Database
) -> None:
    before = await owner_rows(app_db, world)
    failures: list[str] = []
    for name in INTRUDERS:
        caller = callers[name]
        mine = await own_chat(caller)
        chat = world.chat_id
        failures += await check(
            caller,
            world,
            [
                Probe("GET", f"/chats/{chat}/messages", 404, ("chat_not_found",)),
                # A cursor is checked against the caller's own listing first: 422 whether or not the
                # chat exists (the twin probe proves it), so it is no oracle either.
                Probe(
                    "GET",
                    f"/chats/{chat}/messages",
                    (404, 422),
                    ("chat_not_found", "invalid_cursor"),
                    params={"cursor": world.messages_cursor},
                ),
                # A's message cursor on the caller's own chat: made for another listing.
                Probe(
                    "GET",
                    f"/chats/{mine}/messages",
                    (422, 200),
                    ("invalid_cursor",),
                    params={"cursor": world.messages_cursor},
                ),
                Probe(
                    "POST", f"/chats/{chat}/messages:stream", 404, ("chat_not_found",), json={"content": "hi"}
                ),
                # Replaying A's request id into A's chat must not replay A's answer.
                Probe(
                    "POST",
                    f"/chats/{chat}/messages:stream",
                    404,
                    ("chat_not_found",),
                    json={"content": "hi", "request_id": world.request_ids[0]},
                ),
                # A's attachment in the caller's own chat is not one of this chat's attachments.
                Probe(
                    "POST",
                    f"/chats/{mine}/messages:stream",
                    400,
                    ("invalid_attachment",),
                    json={"content": "read it", "attachment_ids": [world.attachment_id]},
                ),
            ],
        )
        # A's request id in the caller's own chat starts a new turn there: never a replay of A's turn.
        answer = await caller.call(
            "POST",
            f"/chats/{mine}/messages:stream",
            json={"content": "hello there", "request_id": world.request_ids[0]},
        )
        assert answer.status == 200, answer.text
        frames = sse_frames(answer.text)
        assert frames[0][0] == "stream_started" and frames[0][1]["is_new_turn"] is True
        assert frames[-1][0] == "done"
        assert frames[0][1]["message_id"] not in world.assistant_message_ids
        assert not world.leaks(answer, world.request_ids[0]), answer.text
        listed = await caller.ok("GET", f"/chats/{mine}/messages")
        assert [m["role"] for m in listed["items"]] == ["user", "assistant"]
        # (the caller chose A's request id itself, so seeing it here tells it nothing)
        listed_answer = Answer(200, "application/json", msgspec.json.encode(listed).decode())
        assert not world.leaks(listed_answer, world.request_ids[0]), listed_answer.text
    assert not failures, "\n".join(failures)
    await assert_owner_untouched(app_db, world, before)


# --- turns: status, retry, edit, delete -------------------------------------------------------------------
async def test_turns_and_turn_mutations(
    world: OwnerWorld, callers: dict[str, Caller], app_db: databases.Database
) -> None:
    before = await owner_rows(app_db, world)
    failures: list[str] = []
    latest, first = world.request_ids[1], world.request_ids[0]
    for name in INTRUDERS:
        caller = callers[name]
        mine = await own_chat(caller)
        chat = world.chat_id
        probes = []
        for target_chat, code in ((chat, "chat_not_found"), (mine, "turn_not_found")):
            for request_id in (latest, first):
                base = f"/chats/{target_chat}/turns/{request_id}"
                probes += [
                    Probe("GET", base, 404, (code,)),
                    Probe("POST", f"{base}/retry", 404, (code,)),
                    Probe("PATCH", base, 404, (code,), json={"content": "rewritten by someone else"}),
                    Probe("DELETE", base, 404, (code,)),
                ]
        failures += await check(caller, world, probes)
    assert not failures, "\n".join(failures)
    await assert_owner_untouched(app_db, world, before)
    # A's latest turn is still A's to change.
    await world.owner.ok("DELETE", f"/chats/{world.chat_id}/turns/{latest}", status=204)


# --- reactions --------------------------------------------------------------------------------------------
async def test_reactions(world: OwnerWorld, callers: dict[str, Caller], app_db: databases.Database) -> None:
    before = await owner_rows(app_db, world)
    failures: list[str] = []
    for name in INTRUDERS:
        caller = callers[name]
        mine = await own_chat(caller)
        probes = []
        for message_id in (*world.assistant_message_ids, world.user_message_ids[0]):
            for target_chat, code in ((world.chat_id, "chat_not_found"), (mine, "message_not_found")):
                path = f"/chats/{target_chat}/messages/{message_id}/reaction"
                probes += [
                    Probe("PUT", path, 404, (code,), json={"reaction": "dislike"}),
                    Probe("DELETE", path, 404, (code,)),
                ]
        failures += await check(caller, world, probes)
    assert not failures, "\n".join(failures)
    await assert_owner_untouched(app_db, world, before)


# --- attachments, including what the local file search can find -------------------------------------------
async def test_attachments_and_file_search(
    world: OwnerWorld, callers: dict[str, Caller], app_db: databases.Database
) -> None:
    before = await owner_rows(app_db, world)
    failures: list[str] = []
    for name in INTRUDERS:
        caller = callers[name]
        mine = await own_chat(caller)
        chat = world.chat_id
        probes = [
            Probe(
                "POST",
                f"/chats/{chat}/attachments",
                404,
                ("chat_not_found",),
                form=lambda: text_file("intruder.txt", b"planted by someone else"),
            ),
        ]
        for attachment_id in (world.attachment_id, world.spare_attachment_id):
            probes += [
                Probe("GET", f"/chats/{chat}/attachments/{attachment_id}", 404, ("chat_not_found",)),
                Probe("DELETE", f"/chats/{chat}/attachments/{attachment_id}", 404, ("chat_not_found",)),
                Probe("GET", f"/chats/{mine}/attachments/{attachment_id}", 404, ("attachment_not_found",)),
                Probe("DELETE", f"/chats/{mine}/attachments/{attachment_id}", 404, ("attachment_not_found",)),
            ]
        failures += await check(caller, world, probes)

        # The caller's own file about the same subject: the search sees this chat's store only.
        own_file = await caller.upload(
            mine, "forecast.txt", b"Our zanzibar revenue forecast is flat this year."
        )
        answer = await caller.call(
            "POST",
            f"/chats/{mine}/messages:stream",
            json={"content": "How did zanzibar revenue grow?", "attachment_ids": [own_file["id"]]},
        )
        assert answer.status == 200, answer.text
        frames = sse_frames(answer.text)
        assert frames[-1][0] == "done", frames
        cited = [item for event, data in frames if event == "citations" for item in data["items"]]
        assert cited and {item.get("attachment_id") for item in cited} == {own_file["id"]}, cited
        leaked = world.leaks(answer, "How did zanzibar revenue grow?")
        assert not leaked, f"{name}: file search leaks {leaked}: {answer.text[:500]}"
    assert not failures, "\n".join(failures)
    await assert_owner_untouched(app_db, world, before)
    await world.owner.ok(
        "DELETE", f"/chats/{world.chat_id}/attachments/{world.spare_attachment_id}", status=204
    )


# --- quota status -----------------------------------------------------------------------------------------
async def test_quota_status_shows_own_numbers_only(
    world: OwnerWorld, callers: dict[str, Caller], app_db: databases.Database
) -> None:
    owner_used = used_credits(await world.owner.ok("GET", "/quota/status"))
    # A's chats run on the standard model: the total bucket carries A's spend.
    assert owner_used[("total", "daily")] > 0 and owner_used[("total", "monthly")] > 0, owner_used
    for name in INTRUDERS:
        answer = await callers[name].call("GET", "/quota/status")
        assert answer.status == 200, answer.text
        used = used_credits(answer.json())
        assert used.keys() == owner_used.keys()
        assert set(used.values()) == {0}, f"{name} sees usage it never had: {used}"

    # B (A's tenant) spends: A's numbers and C's (A's user id in another tenant) do not move.
    chat_b = await own_chat(callers["B"])
    await callers["B"].stream(chat_b, {"content": "spend a little"})
    used_b = used_credits(await callers["B"].ok("GET", "/quota/status"))
    assert all(value > 0 for value in used_b.values()), used_b  # B's chat: the premium default model
    assert used_credits(await world.owner.ok("GET", "/quota/status")) == owner_used
    assert set(used_credits(await callers["C"].ok("GET", "/quota/status")).values()) == {0}
    assert set(used_credits(await callers["D"].ok("GET", "/quota/status")).values()) == {0}


# --- operator endpoints ------------------------------------------------------------------------------------
async def test_operator_endpoints_need_the_admin_role(
    world: OwnerWorld, callers: dict[str, Caller], app_db: databases.Database
) -> None:
    """Dead letters carry other people's events: without the admin role they are 403, not data."""
    failures: list[str] = []
    for name in INTRUDERS:
        base = "/admin/outbox"
        failures += await check(
            callers[name],
            world,
            [
                Probe("GET", f"{base}/status", 403, ("forbidden",)),
                Probe("GET", f"{base}/dead-letters", 403, ("forbidden",)),
                Probe("GET", f"{base}/dead-letters", 403, ("forbidden",), params={"status": "all"}),
                Probe("GET", f"{base}/dead-letters/1", 403, ("forbidden",)),
                Probe("POST", f"{base}/dead-letters/1/replay", 403, ("forbidden",)),
                Probe("POST", f"{base}/dead-letters/1/discard", 403, ("forbidden",)),
            ],
        )
        # Metrics (outside /v1) are for any authenticated caller: counters only, nobody's data.
        response = await callers[name].client.get("/mini-chat/metrics", headers=callers[name].headers)
        metrics = Answer(response.status, response.content_type, await response.text())
        assert metrics.status == 200 and not world.leaks(metrics, ""), metrics.text[:300]
    assert not failures, "\n".join(failures)
