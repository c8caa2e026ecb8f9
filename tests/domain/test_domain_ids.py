"""`uuid_text` is `str(uuid)`, for every kind of UUID the service holds (asyncpg's subclass included)."""

from __future__ import annotations

import uuid

from asyncpg.pgproto.pgproto import UUID as AsyncpgUUID

from minichat_host.domain.ids import uuid_text


def test_uuid_text_is_the_canonical_text() -> None:
    values = [uuid.uuid4(), uuid.uuid1(), uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.UUID(int=255)]
    values += [uuid.uuid4() for _ in range(200)]
    for value in values:
        assert uuid_text(value) == str(value)
        text = uuid_text(AsyncpgUUID(value.bytes))
        assert type(text) is str and text == str(value)
