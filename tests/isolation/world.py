"""The isolation suite's world: one app on one database, four identities in two tenants, and the data that
user A owns (chats, streamed turns, reactions, attachments), with every string that would betray it.

Identities (JWT HS256, one token per request identity):
- A: tenant T1, user U1 — the owner;
- B: tenant T1, user U2 — same tenant, another user;
- C: tenant T2, user U1 — another tenant, the *same user id* as A (catches queries scoped by user only);
- D: tenant T2, user U3 — another tenant, another user.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import databases
import jwt
import msgspec
import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from minichat_host.db.tables import (
    attachments,
    chat_turns,
    chats,
    message_attachments,
    message_reactions,
    messages,
    quota_usage,
)

PREFIX = "/mini-chat/v1"
PROBLEM_JSON = "application/problem+json"
JWT_SECRET = "isolation-suite-secret-of-a-decent-length"
GATEWAY_SECRET = "gateway-shared-secret-for-the-isolation-suite"
ClientT = TestClient[Any, Any]


@dataclass(frozen=True)
class Identity:
    name: str
    tenant_id: uuid.UUID
    user_id: uuid.UUID

    def token(self) -> str:
        claims = {
            "tenant_id": str(self.tenant_id),
            "sub": str(self.user_id),
            "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30),
        }
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def gateway_headers(who: Identity, secret: str = GATEWAY_SECRET) -> dict[str, str]:
    """The headers a gateway sets for `who` (`auth.mode: trusted_headers`)."""
    return {"X-Tenant-Id": str(who.tenant_id), "X-User-Id": str(who.user_id), "X-Gateway-Secret": secret}


def identities() -> dict[str, Identity]:
    tenant_1, tenant_2 = uuid.uuid4(), uuid.uuid4()
    user_1, user_2, user_3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    return {
        "A": Identity("A", tenant_1, user_1),
        "B": Identity("B", tenant_1, user_2),
        "C": Identity("C", tenant_2, user_1),
        "D": Identity("D", tenant_2, user_3),
    }


@dataclass
class Answer:
    """One HTTP exchange, read to the end."""

    status: int
    content_type: str
    text: str

    def json(self) -> Any:
        return msgspec.json.decode(self.text)


class Caller:
    """HTTP calls to the app as one identity (an `Authorization: Bearer` JWT on every request)."""

    def __init__(self, client: ClientT, who: Identity, headers: dict[str, str] | None = None) -> None:
        self.client = client
        self.who = who
        self.headers = headers if headers is not None else {"Authorization": f"Bearer {who.token()}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        form: aiohttp.FormData | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        response = await self.client.request(
            method,
            f"{PREFIX}{path}",
            headers=self.headers,
            json=json,
            data=form,
            params=params,
        )
        text = await response.text()
        return Answer(response.status, response.content_type, text)

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        answer = await self.call(method, path, **kwargs)
        assert answer.status == status, (
            f"{self.who.name} {method} {path}: {answer.status} {answer.text[:500]}"
        )
        return answer.json() if answer.text and answer.content_type != "text/event-stream" else answer

    async def stream(self, chat_id: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Send a message and return the SSE frames (event, data); the stream must end with `done`."""
        answer = await self.call("POST", f"/chats/{chat_id}/messages:stream", json=body)
        assert answer.status == 200 and answer.content_type == "text/event-stream", answer.text[:500]
        frames = sse_frames(answer.text)
        assert frames and frames[-1][0] == "done", frames
        return frames

    async def upload(self, chat_id: str, filename: str, content: bytes) -> dict[str, Any]:
        result: dict[str, Any] = await self.ok(
            "POST", f"/chats/{chat_id}/attachments", status=201, form=text_file(filename, content)
        )
        return result


def text_file(filename: str, content: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", content, filename=filename, content_type="text/plain")
    return form


def sse_frames(body: str) -> list[tuple[str, dict[str, Any]]]:
    frames: list[tuple[str, dict[str, Any]]] = []
    for block in body.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "):
            frames.append((lines[0][len("event: ") :], msgspec.json.decode(lines[1][len("data: ") :])))
    return frames


@dataclass
class OwnerWorld:
    """What A owns, and `secrets`: name → a string of A's data that must never reach anyone else."""

    owner: Caller
    chat_id: str
    other_chat_ids: list[str]
    request_ids: list[str]
    assistant_message_ids: list[str]
    user_message_ids: list[str]
    attachment_id: str  # referenced by A's first message
    spare_attachment_id: str  # not referenced: deletable by A
    chats_cursor: str  # A's `next_cursor` of the chat list (limit 1)
    messages_cursor: str  # A's `next_cursor` of the chat's messages (limit 1)
    secrets: dict[str, str] = field(default_factory=dict)

    def leaks(self, answer: Answer, sent: str) -> list[str]:
        """The secrets in the answer's body that the caller did not send itself (a 404 may echo the id
        from the path; that tells the caller nothing it did not know)."""
        return sorted(
            name for name, value in self.secrets.items() if value in answer.text and value not in sent
        )


async def build_owner_world(owner: Caller, database: databases.Database) -> OwnerWorld:
    """A: three chats; in the first one an attachment, two streamed turns (the first with the file) and a
    like on the first answer, plus a spare attachment; cursors of A's listings."""
    marker = uuid.uuid4().hex[:12]
    titles = [f"alpha {marker} ledger", f"beta {marker} plans", f"gamma {marker} notes"]
    chat_ids = []
    for title in titles:
        chat = await owner.ok("POST", "/chats", status=201, json={"title": title, "model": "local-standard"})
        chat_ids.append(chat["id"])
    chat_id = chat_ids[0]
    file_text = f"Quarterly figures {marker}: zanzibar revenue grew by seventeen percent."
    attached = await owner.upload(chat_id, f"figures-{marker}.txt", file_text.encode())
    spare = await owner.upload(chat_id, f"spare-{marker}.txt", f"Spare file {marker} kumquat.".encode())
    assert attached["status"] == spare["status"] == "ready"

    contents = [f"What about zanzibar revenue {marker}-one?", f"And the follow-up {marker}-two?"]
    request_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    first = await owner.stream(
        chat_id, {"content": contents[0], "request_id": request_ids[0], "attachment_ids": [attached["id"]]}
    )
    second = await owner.stream(chat_id, {"content": contents[1], "request_id": request_ids[1]})
    assistant_ids = [frames[0][1]["message_id"] for frames in (first, second)]
    answers = [
        "".join(data["content"] for event, data in frames if event == "delta") for frames in (first, second)
    ]
    await owner.ok("PUT", f"/chats/{chat_id}/messages/{assistant_ids[0]}/reaction", json={"reaction": "like"})

    listed = await owner.ok("GET", f"/chats/{chat_id}/messages")
    user_ids = [m["id"] for m in listed["items"] if m["role"] == "user"]
    chats_page = await owner.ok("GET", "/chats", params={"limit": "1"})
    messages_page = await owner.ok("GET", f"/chats/{chat_id}/messages", params={"limit": "1"})
    turn_ids = [
        str(row["id"])
        for row in await database.fetch_all(
            sa.select(chat_turns.c.id).where(chat_turns.c.chat_id == uuid.UUID(chat_id))
        )
    ]

    secrets: dict[str, str] = {}
    for index, value in enumerate(chat_ids):
        secrets[f"chat_id[{index}]"] = value
        secrets[f"title[{index}]"] = titles[index]
    secrets["marker"] = marker  # in every title, file name, file text and message of A
    secrets["file_text"] = file_text
    secrets["file_phrase"] = "seventeen percent"  # only in the file: a search hit would carry it
    secrets["spare_word"] = "kumquat"
    for index in range(2):
        secrets[f"request_id[{index}]"] = request_ids[index]
        secrets[f"assistant_message_id[{index}]"] = assistant_ids[index]
        secrets[f"user_message_id[{index}]"] = user_ids[index]
        secrets[f"content[{index}]"] = contents[index]
        secrets[f"answer[{index}]"] = answers[index]
    for index, turn_id in enumerate(turn_ids):
        secrets[f"turn_id[{index}]"] = turn_id
    secrets["attachment_id"] = attached["id"]
    secrets["spare_attachment_id"] = spare["id"]
    assert chats_page["page_info"]["next_cursor"] and messages_page["page_info"]["next_cursor"]
    return OwnerWorld(
        owner=owner,
        chat_id=chat_id,
        other_chat_ids=chat_ids[1:],
        request_ids=request_ids,
        assistant_message_ids=assistant_ids,
        user_message_ids=user_ids,
        attachment_id=attached["id"],
        spare_attachment_id=spare["id"],
        chats_cursor=chats_page["page_info"]["next_cursor"],
        messages_cursor=messages_page["page_info"]["next_cursor"],
        secrets=secrets,
    )


async def owner_rows(database: databases.Database, world: OwnerWorld) -> dict[str, list[tuple[str, ...]]]:
    """Every row that belongs to A (A's chats and what hangs off them, A's quota rows), stringified."""
    # One `==` query per id: `databases` does not run the UUID bind processor inside an expanding IN.
    chat_ids = [uuid.UUID(c) for c in (world.chat_id, *world.other_chat_ids)]
    who = world.owner.who
    selections: dict[str, list[tuple[sa.Table, sa.ColumnElement[bool]]]] = {
        "chats": [(chats, chats.c.id == c) for c in chat_ids],
        "messages": [(messages, messages.c.chat_id == c) for c in chat_ids],
        "chat_turns": [(chat_turns, chat_turns.c.chat_id == c) for c in chat_ids],
        "attachments": [(attachments, attachments.c.chat_id == c) for c in chat_ids],
        "message_attachments": [(message_attachments, message_attachments.c.chat_id == c) for c in chat_ids],
        "message_reactions": [
            (message_reactions, message_reactions.c.message_id == uuid.UUID(m))
            for m in world.assistant_message_ids
        ],
        "quota_usage": [
            (
                quota_usage,
                sa.and_(quota_usage.c.tenant_id == who.tenant_id, quota_usage.c.user_id == who.user_id),
            )
        ],
    }
    result: dict[str, list[tuple[str, ...]]] = {}
    for name, queries in selections.items():
        found: list[tuple[str, ...]] = []
        for table, where in queries:
            columns = list(table.c)
            rows = await database.fetch_all(sa.select(*columns).where(where))
            found.extend(tuple(str(row[c.name]) for c in columns) for row in rows)
        result[name] = sorted(found)
    return result


def used_credits(quota: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(tier, period) → used_credits_micro of a `GET /quota/status` body."""
    return {
        (tier["tier"], period["period"]): period["used_credits_micro"]
        for tier in quota["tiers"]
        for period in tier["periods"]
    }
