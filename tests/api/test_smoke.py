"""Steps 1-7 of the original's smoke script (original-api.md §8), in order, on the embedded defaults: no
config beyond the database, the bundled demo catalog, the dev identity and no auth headers."""

from __future__ import annotations

from api.helpers import PREFIX, ClientFactory


async def test_smoke_steps_1_to_7(make_client: ClientFactory) -> None:
    client = await make_client(catalog=None)

    # 1. GET /health → 200 JSON.
    response = await client.get("/health")
    assert response.status == 200
    assert (await response.json())["status"] == "healthy"

    # 2. GET models → non-empty items; the script uses items[0].
    response = await client.get(f"{PREFIX}/models")
    assert response.status == 200
    items = (await response.json())["items"]
    assert items
    model_id = items[0]["model_id"]
    assert items[0].get("display_name")

    # 3. GET models/{id} → the same model.
    response = await client.get(f"{PREFIX}/models/{model_id}")
    assert response.status == 200
    assert (await response.json())["model_id"] == model_id

    # 4. POST chats → 201 with an id (and Location).
    response = await client.post(f"{PREFIX}/chats", json={"title": "Smoke Test Chat", "model": model_id})
    assert response.status == 201
    chat = await response.json()
    chat_id = chat["id"]
    assert chat_id
    assert response.headers["Location"] == f"{PREFIX}/chats/{chat_id}"

    # 5. GET the chat.
    response = await client.get(f"{PREFIX}/chats/{chat_id}")
    assert response.status == 200
    assert (await response.json())["id"] == chat_id

    # 6. PATCH the title.
    response = await client.patch(f"{PREFIX}/chats/{chat_id}", json={"title": "Updated Smoke Title"})
    assert response.status == 200
    assert (await response.json())["title"] == "Updated Smoke Title"

    # 7. GET chats (no params, page 1 only) contains the chat.
    response = await client.get(f"{PREFIX}/chats")
    assert response.status == 200
    assert any(item["id"] == chat_id for item in (await response.json())["items"])
