"""UUIDs read from either driver come back as `uuid.UUID`s, built without `UUID.__init__`: plain ones, except
that `fast_uuid` (the hot reads) keeps asyncpg's own subclass, which behaves the same."""

from __future__ import annotations

import pickle
import uuid

import msgspec
import pytest
from asyncpg.pgproto import pgproto

from minichat_host.db.repos.common import as_uuid, uuid_from_int
from minichat_host.db.repos.reads import fast_uuid


@pytest.mark.parametrize("made", ["asyncpg", "hex", "text", "plain"])
def test_every_driver_value_becomes_an_ordinary_uuid(made: str) -> None:
    original = uuid.uuid4()
    value = {
        "asyncpg": pgproto.UUID(original.bytes),
        "hex": original.hex,
        "text": str(original),
        "plain": original,
    }[made]
    for read in (as_uuid, fast_uuid):
        result = read(value)
        kept = read is fast_uuid and made == "asyncpg"
        assert type(result) is (pgproto.UUID if kept else uuid.UUID)
        assert result == original and hash(result) == hash(original) and original == result
        assert {original: 1}[result] == 1 and {result: 1}[original] == 1
        assert msgspec.json.encode({result: [result]}) == msgspec.json.encode({original: [original]})
        assert sorted([result, uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)])[1] == original
        assert (str(result), result.hex, result.version) == (str(original), original.hex, 4)
        assert result.is_safe is uuid.SafeUUID.unknown
        assert pickle.loads(pickle.dumps(result)) == original


def test_uuid_from_int_is_what_the_constructor_builds() -> None:
    for number in (0, 1, 2**128 - 1, uuid.uuid4().int):
        assert uuid_from_int(number) == uuid.UUID(int=number)
        assert uuid_from_int(number).__getstate__() == uuid.UUID(int=number).__getstate__()


def test_garbage_is_still_refused() -> None:
    with pytest.raises(ValueError):
        as_uuid("not a uuid")
