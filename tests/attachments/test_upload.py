"""The upload contract (original-api.md §6): 201 ready, exact size, kinds, MIME rules, 413, 415, limits,
503 concurrency, filename sanitizing, malformed bodies; a refused upload changes nothing."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from attachments.harness import (
    PREFIX,
    XLSX,
    ClientT,
    FakeStorage,
    Stack,
    attachment_count,
    attachment_row,
    create_chat,
    expect_problem,
    open_client,
    open_stack,
    png_bytes,
    upload,
    upload_ok,
    vector_store_rows,
    xlsx_bytes,
)
from minichat_host.testing import register_plugin

SMOKE_TEXT = b"This is a smoke test file for minichat attachments. It has seventy-two!!"


def leftover_uploads(stack: Stack) -> list[Path]:
    directory = stack.config.data_dir() / "tmp" / "uploads"
    return list(directory.glob("*")) if directory.exists() else []


async def test_text_upload_is_ready_with_exact_size(stack: Stack, client: ClientT) -> None:
    assert len(SMOKE_TEXT) == 72
    chat_id = await create_chat(client)
    body = await upload_ok(client, chat_id, "smoke-test.txt", "text/plain", SMOKE_TEXT)
    assert body["filename"] == "smoke-test.txt"
    assert body["content_type"] == "text/plain"
    assert body["kind"] == "document"
    assert body["size_bytes"] == 72
    assert body["status"] == "ready"
    assert set(body) == {"id", "filename", "content_type", "size_bytes", "status", "kind", "created_at"}
    response = await client.get(f"{PREFIX}/chats/{chat_id}/attachments/{body['id']}")
    assert response.status == 200
    assert await response.json() == body
    row = await attachment_row(stack.database, body["id"])
    assert row["provider_file_id"] and row["for_file_search"] and not row["for_code_interpreter"]
    stores = await vector_store_rows(stack.database)
    assert len(stores) == 1 and stores[0]["vector_store_id"] and stores[0]["file_count"] == 1
    assert leftover_uploads(stack) == []


async def test_second_document_reuses_the_chat_vector_store(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    await upload_ok(client, chat_id, "a.md", "text/markdown", b"# alpha")
    await upload_ok(client, chat_id, "b.txt", "text/plain; charset=UTF-8", b"beta")
    stores = await vector_store_rows(stack.database)
    assert len(stores) == 1 and stores[0]["file_count"] == 2


async def test_concurrent_first_uploads_create_one_vector_store(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    results = await asyncio.gather(
        *(
            upload_ok(client, chat_id, f"doc-{i}.txt", "text/plain", f"document {i}".encode())
            for i in range(4)
        )
    )
    assert all(r["status"] == "ready" for r in results)
    stores = await vector_store_rows(stack.database)
    assert len(stores) == 1 and stores[0]["file_count"] == 4


async def test_image_gets_a_webp_thumbnail_and_is_not_indexed(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    data = png_bytes(640, 320)
    body = await upload_ok(client, chat_id, "photo.png", "image/png", data)
    assert body["kind"] == "image" and body["status"] == "ready" and body["size_bytes"] == len(data)
    thumbnail = body["img_thumbnail"]
    assert thumbnail["content_type"] == "image/webp"
    assert (thumbnail["width"], thumbnail["height"]) == (128, 64)
    decoded = Image.open(io.BytesIO(base64.b64decode(thumbnail["data_base64"])))
    assert decoded.format == "WEBP" and decoded.size == (128, 64)
    row = await attachment_row(stack.database, body["id"])
    assert not row["for_file_search"] and not row["for_code_interpreter"]
    assert await vector_store_rows(stack.database) == []


async def test_image_that_does_not_decode_is_415(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    response = await upload(client, chat_id, "fake.png", "image/png", b"not an image at all")
    await expect_problem(response, 415, "unsupported_file_type")
    assert await attachment_count(stack.database) == 0


async def test_xlsx_goes_to_the_code_interpreter(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    data = xlsx_bytes([["region", "revenue"], ["north", 100], ["south", 250]])
    body = await upload_ok(client, chat_id, "sales-data.xlsx", XLSX, data)
    assert body["content_type"] == XLSX and body["kind"] == "document" and body["size_bytes"] == len(data)
    row = await attachment_row(stack.database, body["id"])
    assert row["for_code_interpreter"] and not row["for_file_search"]
    assert await vector_store_rows(stack.database) == []


@pytest.mark.parametrize(
    ("filename", "sent", "stored"),
    [
        ("notes.md", "application/octet-stream", "text/markdown"),
        ("script.py", "application/octet-stream", "text/x-python"),
        ("table.csv", "text/csv", "text/plain"),
        ("table.csv", "application/octet-stream", "text/plain"),
        ("page.html", "TEXT/HTML; charset=utf-8", "text/html"),
        ("pic.jpg", "image/jpg", "image/jpeg"),
    ],
)
async def test_mime_normalization(client: ClientT, filename: str, sent: str, stored: str) -> None:
    chat_id = await create_chat(client)
    data = png_bytes(8, 8) if stored.startswith("image/") else b"a,b\n1,2\n"
    if stored == "image/jpeg":
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
        data = buffer.getvalue()
    body = await upload_ok(client, chat_id, filename, sent, data)
    assert body["content_type"] == stored


@pytest.mark.parametrize(
    ("filename", "sent"),
    [
        ("bad-file.exe", "application/octet-stream"),
        ("archive.zip", "application/zip"),
        ("noext", "application/octet-stream"),
        ("evil.svg", "image/svg+xml"),
    ],
)
async def test_unsupported_types_are_415(stack: Stack, client: ClientT, filename: str, sent: str) -> None:
    chat_id = await create_chat(client)
    response = await upload(client, chat_id, filename, sent, b"MZ\x90\x00" * 10)
    await expect_problem(response, 415, "unsupported_file_type")
    assert await attachment_count(stack.database) == 0


async def test_csv_can_be_disabled(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir, rag={"allow_csv_upload": False}) as stack:
        async with open_client(stack) as client:
            chat_id = await create_chat(client)
            response = await upload(client, chat_id, "t.csv", "text/csv", b"a,b\n")
            await expect_problem(response, 415, "unsupported_file_type")


async def test_413_from_content_length_before_reading(migrated_db_url: str, data_dir: Path) -> None:
    limits = {"uploaded_file_max_size_kb": 1, "uploaded_image_max_size_kb": 1}
    async with open_stack(migrated_db_url, data_dir, rag=limits) as stack:
        async with open_client(stack) as client:
            chat_id = await create_chat(client)
            response = await upload(client, chat_id, "big.txt", "text/plain", b"x" * 200_000)
            await expect_problem(response, 413, "file_too_large")
            assert await attachment_count(stack.database) == 0
            assert leftover_uploads(stack) == []


async def test_413_by_counting_without_content_length(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir, rag={"uploaded_file_max_size_kb": 4}) as stack:
        async with open_client(stack) as client:
            chat_id = await create_chat(client)
            from attachments.harness import multipart_body

            body, header = multipart_body("big.txt", "text/plain", b"y" * 50_000)

            async def chunked() -> AsyncIterator[bytes]:
                for start in range(0, len(body), 4096):
                    yield body[start : start + 4096]

            response = await client.post(
                f"{PREFIX}/chats/{chat_id}/attachments", data=chunked(), headers={"Content-Type": header}
            )
            await expect_problem(response, 413, "file_too_large")
            # Just over the cap but within the multipart allowance: the header passes, counting catches it.
            response = await upload(client, chat_id, "edge.txt", "text/plain", b"z" * (4 * 1024 + 1))
            await expect_problem(response, 413, "file_too_large")
            assert (await upload_ok(client, chat_id, "fits.txt", "text/plain", b"z" * 4096))[
                "size_bytes"
            ] == 4096
            assert await attachment_count(stack.database) == 1
            assert leftover_uploads(stack) == []


async def test_images_have_their_own_cap(migrated_db_url: str, data_dir: Path) -> None:
    limits = {"uploaded_image_max_size_kb": 1, "uploaded_file_max_size_kb": 1024}
    async with open_stack(migrated_db_url, data_dir, rag=limits) as stack:
        async with open_client(stack) as client:
            chat_id = await create_chat(client)
            noisy = Image.effect_noise((64, 64), 90).convert("RGB")
            buffer = io.BytesIO()
            noisy.save(buffer, format="PNG")
            assert len(buffer.getvalue()) > 1024
            response = await upload(client, chat_id, "noise.png", "image/png", buffer.getvalue())
            await expect_problem(response, 413, "file_too_large")
            await upload_ok(client, chat_id, "doc.txt", "text/plain", b"d" * 4000)


async def test_per_chat_document_limit(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir, rag={"max_documents_per_chat": 2}) as stack:
        async with open_client(stack) as client:
            chat_id = await create_chat(client)
            await upload_ok(client, chat_id, "1.txt", "text/plain", b"one")
            await upload_ok(client, chat_id, "2.txt", "text/plain", b"two")
            response = await upload(client, chat_id, "3.txt", "text/plain", b"three")
            await expect_problem(response, 400, "document_limit_exceeded")
            # Images are not documents; another chat has its own count.
            await upload_ok(client, chat_id, "p.png", "image/png", png_bytes(4, 4))
            other = await create_chat(client)
            await upload_ok(client, other, "3.txt", "text/plain", b"three")
            assert await attachment_count(stack.database) == 4


async def test_per_chat_storage_limit(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir, rag={"max_total_upload_mb_per_chat": 1}) as stack:
        async with open_client(stack) as client:
            chat_id = await create_chat(client)
            await upload_ok(client, chat_id, "a.txt", "text/plain", b"a" * 600_000)
            response = await upload(client, chat_id, "b.txt", "text/plain", b"b" * 600_000)
            await expect_problem(response, 400, "storage_limit_exceeded")
            assert await attachment_count(stack.database) == 1
            assert leftover_uploads(stack) == []


async def test_deleted_attachments_free_their_quota(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir, rag={"max_documents_per_chat": 1}) as stack:
        async with open_client(stack) as client:
            chat_id = await create_chat(client)
            first = await upload_ok(client, chat_id, "1.txt", "text/plain", b"one")
            response = await client.delete(f"{PREFIX}/chats/{chat_id}/attachments/{first['id']}")
            assert response.status == 204
            await upload_ok(client, chat_id, "2.txt", "text/plain", b"two")


async def test_concurrent_upload_limit_is_503_with_retry_after(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir, rag={"max_concurrent_uploads": 1}) as stack:
        async with open_client(stack) as client:
            chat_id = await create_chat(client)
            from attachments.harness import multipart_body

            body, header = multipart_body("slow.txt", "text/plain", b"s" * 10_000)
            release = asyncio.Event()
            started = asyncio.Event()

            async def slow() -> AsyncIterator[bytes]:
                yield body[:2000]
                started.set()
                await release.wait()
                yield body[2000:]

            first = asyncio.ensure_future(
                client.post(
                    f"{PREFIX}/chats/{chat_id}/attachments", data=slow(), headers={"Content-Type": header}
                )
            )
            await asyncio.wait_for(started.wait(), 10)
            for _ in range(200):  # until the first upload holds its slot
                if stack.attachments.slots.active == 1:
                    break
                await asyncio.sleep(0.01)
            assert stack.attachments.slots.active == 1
            response = await upload(client, chat_id, "second.txt", "text/plain", b"2")
            problem = await expect_problem(response, 503, "upload_concurrency_limit")
            assert response.headers["Retry-After"] == "5"
            assert "retry" in problem["detail"].lower()
            release.set()
            done = await first
            assert done.status == 201, await done.text()
            assert (await done.json())["size_bytes"] == 10_000
            await upload_ok(client, chat_id, "third.txt", "text/plain", b"3")


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (None, "upload"),
        ("../../etc/passwd.txt", "passwd.txt"),
        ("C:\\Users\\me\\report.txt", "report.txt"),
        ("..", "upload"),
    ],
)
async def test_filename_sanitizing(client: ClientT, sent: str | None, stored: str) -> None:
    chat_id = await create_chat(client)
    body = await upload_ok(client, chat_id, sent, "text/plain", b"content")  # type: ignore[arg-type]
    assert body["filename"] == stored


async def test_filename_control_characters_are_removed(client: ClientT) -> None:
    chat_id = await create_chat(client)
    boundary = "ctrlboundary"
    payload = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; '
        "filename*=UTF-8''a%0D%0AX-Evil%3A%201%E2%80%AE.txt\r\n"
        "Content-Type: text/plain\r\n\r\nhi\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    response = await client.post(
        f"{PREFIX}/chats/{chat_id}/attachments",
        data=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["filename"] == "aX-Evil: 1.txt"


async def test_long_filename_keeps_its_extension(client: ClientT) -> None:
    chat_id = await create_chat(client)
    body = await upload_ok(client, chat_id, "n" * 300 + ".pdf", "text/plain", b"x")
    assert len(body["filename"]) == 255 and body["filename"].endswith(".pdf")


async def malformed(client: ClientT, chat_id: str, body: bytes, content_type: str) -> Any:
    return await client.post(
        f"{PREFIX}/chats/{chat_id}/attachments", data=body, headers={"Content-Type": content_type}
    )


async def test_malformed_bodies_are_400(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    await expect_problem(
        await malformed(client, chat_id, b"--x\r\n", "multipart/form-data"), 400, "invalid_upload"
    )
    await expect_problem(
        await malformed(client, chat_id, b'{"a":1}', "application/json"), 400, "invalid_upload"
    )
    only_note = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n'
    await expect_problem(
        await malformed(client, chat_id, only_note, "multipart/form-data; boundary=b"), 400, "invalid_upload"
    )
    response = await upload(client, chat_id, "x.txt", None, b"abc")
    await expect_problem(response, 400, "invalid_upload")
    response = await upload(client, chat_id, "empty.txt", "text/plain", b"")
    await expect_problem(response, 400, "invalid_upload")
    assert await attachment_count(stack.database) == 0
    assert leftover_uploads(stack) == []


async def test_upload_to_a_missing_or_foreign_chat_is_404(stack: Stack, client: ClientT) -> None:
    response = await upload(client, str(uuid.uuid4()), "a.txt", "text/plain", b"a")
    await expect_problem(response, 404, "chat_not_found")
    chat_id = await create_chat(client)
    async with open_client(stack, user_id=uuid.uuid4()) as stranger:
        response = await upload(stranger, chat_id, "a.txt", "text/plain", b"a")
        await expect_problem(response, 404, "chat_not_found")
    response = await client.post(f"{PREFIX}/chats/not-a-uuid/attachments", data=b"")
    await expect_problem(response, 400, "invalid_uuid")


async def test_storage_failure_is_502_and_leaves_nothing_visible(stack: Stack, client: ClientT) -> None:
    storage = FakeStorage(fail_uploads=True)
    with register_plugin(stack.plugins, storage):
        chat_id = await create_chat(client)
        response = await upload(client, chat_id, "a.txt", "text/plain", b"a")
        await expect_problem(response, 502, "provider_unavailable")
        rows = await stack.database.fetch_all(
            "SELECT status, error_code, deleted_at, cleanup_status FROM attachments"
        )
        assert [(r[0], r[1], r[2] is not None, r[3]) for r in rows] == [
            ("failed", "upload_failed", True, "done")
        ]

        storage.fail_uploads = False
        storage.fail_indexing = True
        response = await upload(client, chat_id, "b.txt", "text/plain", b"b")
        await expect_problem(response, 502, "provider_unavailable")
        failed = await stack.database.fetch_one(
            "SELECT id, status, error_code, cleanup_status FROM attachments "
            "WHERE error_code = 'indexing_failed'"
        )
        assert failed is not None and failed[1] == "failed" and failed[3] == "pending"
        # The stored file is handed to the clean-up queue and deleted there.
        assert len(storage.files) == 1
        await stack.drain()
        assert storage.files == {}
        row = await attachment_row(stack.database, failed[0])
        assert row["cleanup_status"] == "done"
