"""The original's smoke flow (original-api.md §8, all 23 steps) against `minichat serve` on the embedded
defaults: a real process, no auth headers, the local model, local storage."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import openpyxl
from test_serve import _free_port, _wait_healthy

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class Smoke:
    def __init__(self, base: str) -> None:
        self.base = base
        self.api = f"{base}/mini-chat/v1"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        req = Request(f"{self.api}{path}", data=data, method=method, headers=headers)
        try:
            with urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except HTTPError as err:
            raw = err.read()
            return err.code, (json.loads(raw) if raw else None)  # every error body is JSON

    def upload(self, chat_id: str, filename: str, content_type: str, content: bytes) -> tuple[int, Any]:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        req = Request(
            f"{self.api}/chats/{chat_id}/attachments",
            data=body,
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        try:
            with urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except HTTPError as err:
            return err.code, json.loads(err.read())

    def stream(self, chat_id: str, body: dict[str, Any]) -> dict[str, Any]:
        req = Request(
            f"{self.api}/chats/{chat_id}/messages:stream",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        result: dict[str, Any] = {"tools": [], "events": []}
        event = ""
        with urlopen(req, timeout=120) as resp:  # a status >= 400 raises, as in the original script
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                    result["events"].append(event)
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "stream_started":
                        result["message_id"] = data["message_id"]
                    elif event == "tool":
                        result["tools"].append(data)
                    elif event in ("done", "error"):
                        result[event] = data
        return result


def test_original_smoke_flow_against_the_embedded_server(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MINICHAT_HOME": str(tmp_path / "home")}
    env.pop("MINICHAT_CONFIG", None)
    env.pop("MINICHAT_LOAD_PLUGINS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "minichat_host", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert _wait_healthy(base, proc)["status"] == "healthy"  # 1
        s = Smoke(base)
        status, models = s.request("GET", "/models")  # 2
        assert status == 200 and models["items"]
        model_id = models["items"][0]["model_id"]
        status, model = s.request("GET", f"/models/{model_id}")  # 3
        assert (status, model["model_id"]) == (200, model_id)
        status, chat = s.request("POST", "/chats", {"title": "Smoke Test Chat", "model": model_id})  # 4
        assert status == 201 and chat["id"]
        chat_id = chat["id"]
        assert s.request("GET", f"/chats/{chat_id}")[1]["id"] == chat_id  # 5
        status, renamed = s.request("PATCH", f"/chats/{chat_id}", {"title": "Updated Smoke Title"})  # 6
        assert (status, renamed["title"]) == (200, "Updated Smoke Title")
        status, chats = s.request("GET", "/chats")  # 7
        assert status == 200 and any(c["id"] == chat_id for c in chats["items"])

        first = s.stream(chat_id, {"content": "What is 2+2? Answer with just the number."})  # 8
        second = s.stream(chat_id, {"content": "And what is 3+3?"})
        for result in (first, second):
            assert "done" in result and result["message_id"] and "error" not in result
            assert result["events"][0] == "stream_started" and result["events"][-1] == "done"
        status, messages = s.request("GET", f"/chats/{chat_id}/messages")  # 9
        assert status == 200 and len(messages["items"]) == 4
        msg1 = first["message_id"]
        assert any(m["id"] == msg1 and m["role"] == "assistant" for m in messages["items"])
        for reaction in ("like", "dislike"):  # 10
            status, body = s.request(
                "PUT", f"/chats/{chat_id}/messages/{msg1}/reaction", {"reaction": reaction}
            )
            assert (status, body["reaction"]) == (200, reaction)
        assert s.request("DELETE", f"/chats/{chat_id}/messages/{msg1}/reaction") == (204, None)
        request_ids = list(dict.fromkeys(m["request_id"] for m in messages["items"]))  # 11
        assert len(request_ids) == 2
        for rid in request_ids:
            status, turn = s.request("GET", f"/chats/{chat_id}/turns/{rid}")
            assert status == 200 and turn["request_id"] == rid and turn["state"] == "done"
        assert s.request("DELETE", f"/chats/{chat_id}/turns/{request_ids[-1]}") == (204, None)

        text = b"This is a smoke test file for the minichat attachment upload. Revenue 42."
        text = text[:72].ljust(72, b".")
        status, att = s.upload(chat_id, "smoke-test.txt", "text/plain", text)  # 12
        assert status == 201 and att["id"]
        assert (att["filename"], att["content_type"], att["kind"], att["size_bytes"]) == (
            "smoke-test.txt",
            "text/plain",
            "document",
            72,
        )
        assert att["status"] == "ready"
        assert s.request("GET", f"/chats/{chat_id}/attachments/{att['id']}")[1]["id"] == att["id"]  # 13
        status, problem = s.upload(chat_id, "bad-file.exe", "application/octet-stream", b"MZ\x90\x00")  # 14
        assert (status, problem["code"]) == (415, "unsupported_file_type")
        result = s.stream(  # 15
            chat_id,
            {"content": "Summarize the attached file in one sentence.", "attachment_ids": [att["id"]]},
        )
        assert "done" in result
        status, messages = s.request("GET", f"/chats/{chat_id}/messages")  # 16
        with_attachments = [m for m in messages["items"] if m["role"] == "user" and m["attachments"]]
        assert with_attachments[0]["attachments"][0]["attachment_id"] == att["id"]
        assert with_attachments[0]["attachments"][0]["kind"] == "document"
        status, problem = s.request("DELETE", f"/chats/{chat_id}/attachments/{att['id']}")  # 17
        assert (status, problem["code"]) == (409, "attachment_locked")
        status, disposable = s.upload(chat_id, "disposable.txt", "text/plain", b"delete me please!\n")  # 18
        assert status == 201 and disposable["size_bytes"] == 18
        assert s.request("DELETE", f"/chats/{chat_id}/attachments/{disposable['id']}") == (204, None)
        status, problem = s.request("GET", f"/chats/{chat_id}/attachments/{disposable['id']}")
        assert status == 404 and problem["code"]
        assert s.request("DELETE", f"/chats/{chat_id}") == (204, None)  # 19

        status, chat2 = s.request("POST", "/chats", {"title": "Smoke Test Chat", "model": model_id})  # 20
        assert status == 201
        book = openpyxl.Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.append(["region", "revenue"])
        for region, revenue in (("north", 1200), ("south", 800), ("west", 500)):
            sheet.append([region, revenue])
        buffer = io.BytesIO()
        book.save(buffer)
        xlsx = buffer.getvalue()
        status, sheet_att = s.upload(chat2["id"], "sales-data.xlsx", XLSX, xlsx)  # 21
        assert status == 201
        assert (sheet_att["filename"], sheet_att["content_type"], sheet_att["kind"]) == (
            "sales-data.xlsx",
            XLSX,
            "document",
        )
        assert sheet_att["size_bytes"] == len(xlsx)
        result = s.stream(  # 22
            chat2["id"],
            {
                "content": "What is the total revenue? Just give me the number.",
                "attachment_ids": [sheet_att["id"]],
            },
        )
        assert "done" in result
        assert any(tool["name"] == "code_interpreter" for tool in result["tools"])
        assert s.request("DELETE", f"/chats/{chat2['id']}") == (204, None)  # 23
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
