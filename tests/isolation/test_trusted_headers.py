"""The owner boundary with identities from a gateway (`auth.mode: trusted_headers`): the same 404 masking,
and headers without the shared secret are refused before anything is read."""

from __future__ import annotations

import uuid

from isolation.world import PROBLEM_JSON, Caller, ClientT, Identity, gateway_headers


async def test_gateway_identities_see_only_their_own_chats(
    gateway_client: ClientT, people: dict[str, Identity]
) -> None:
    callers = {name: Caller(gateway_client, who, gateway_headers(who)) for name, who in people.items()}
    owner = callers["A"]
    marker = uuid.uuid4().hex
    chat = await owner.ok("POST", "/chats", status=201, json={"title": f"gateway {marker}"})
    frames = await owner.stream(chat["id"], {"content": f"secret {marker}"})
    assert frames[-1][0] == "done"

    for name in ("B", "C", "D"):
        caller = callers[name]
        for method, path, body in (
            ("GET", f"/chats/{chat['id']}", None),
            ("GET", f"/chats/{chat['id']}/messages", None),
            ("POST", f"/chats/{chat['id']}/messages:stream", {"content": "hi"}),
        ):
            answer = await caller.call(method, path, json=body)
            assert (answer.status, answer.content_type) == (404, PROBLEM_JSON), (name, path, answer.text)
            assert answer.json()["code"] == "chat_not_found" and marker not in answer.text
        listed = await caller.ok("GET", "/chats")
        assert listed["items"] == [], (name, listed)

    # A's own headers without the gateway's secret (or with a wrong one) are not A.
    for headers in (
        {k: v for k, v in gateway_headers(people["A"]).items() if k != "X-Gateway-Secret"},
        gateway_headers(people["A"], secret="guessed-secret"),
        gateway_headers(people["A"], secret=""),
    ):
        spoofer = Caller(gateway_client, people["A"], headers)
        for path in ("/chats", f"/chats/{chat['id']}", f"/chats/{chat['id']}/messages"):
            answer = await spoofer.call("GET", path)
            assert (answer.status, answer.content_type) == (401, PROBLEM_JSON), answer.text
            assert answer.json()["code"] == "unauthorized" and marker not in answer.text
    listed = await owner.ok("GET", f"/chats/{chat['id']}/messages")
    assert [m["role"] for m in listed["items"]] == ["user", "assistant"]
