"""`api/problems.py` helpers: a UUID path parameter takes every spelling `uuid.UUID` accepts, the canonical
one through msgspec, and anything else is a 400 `invalid_uuid` problem."""

from __future__ import annotations

import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from minichat_host.api.problems import ProblemError, path_uuid

VALUE = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")


def _request(raw: str) -> web.Request:
    request = make_mocked_request("GET", "/x", match_info={"chat_id": raw})
    return request


@pytest.mark.parametrize(
    "raw",
    [
        str(VALUE),
        str(VALUE).upper(),
        VALUE.hex,
        "{" + str(VALUE) + "}",
        "urn:uuid:" + str(VALUE),
    ],
)
def test_every_spelling_of_a_uuid_is_accepted(raw: str) -> None:
    parsed = path_uuid(_request(raw), "chat_id")
    assert parsed == VALUE and type(parsed) is uuid.UUID


@pytest.mark.parametrize("raw", ["", "abc", str(VALUE)[:-1] + "g", str(VALUE) + "0", " " + str(VALUE)])
def test_anything_else_is_a_400_invalid_uuid(raw: str) -> None:
    with pytest.raises(ProblemError) as caught:
        path_uuid(_request(raw), "chat_id")
    assert caught.value.status == 400 and caught.value.code == "invalid_uuid"
