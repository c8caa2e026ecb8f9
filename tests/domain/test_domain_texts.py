"""`uuid_text` is `str(uuid)`, for every kind of UUID the service holds (asyncpg's subclass included), and
`rfc3339` is `isoformat` in UTC with a `Z`."""

from __future__ import annotations

import datetime as dt
import uuid

from asyncpg.pgproto.pgproto import UUID as AsyncpgUUID

from minichat_host.domain.texts import rfc3339, uuid_text


def test_uuid_text_is_the_canonical_text() -> None:
    values = [uuid.uuid4(), uuid.uuid1(), uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.UUID(int=255)]
    values += [uuid.uuid4() for _ in range(200)]
    for value in values:
        assert uuid_text(value) == str(value)
        text = uuid_text(AsyncpgUUID(value.bytes))
        assert type(text) is str and text == str(value)


def test_rfc3339_is_isoformat_in_utc_with_a_z() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    values = [
        dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC),  # no microseconds: none written
        dt.datetime(2026, 3, 1, 9, 0, 0, 500000, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 1, 30, 0, 1, tzinfo=plus_two),  # converted, across midnight
        dt.datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(0))),
    ]
    values += [dt.datetime.now(dt.UTC) + dt.timedelta(microseconds=n * 7919) for n in range(300)]
    for value in values:
        assert rfc3339(value) == value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
