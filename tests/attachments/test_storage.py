"""The local storage building blocks: text extraction, the FTS5 index, the sheet reader, thumbnails, and
the pure upload rules (MIME normalization, filename sanitizing)."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from attachments.harness import png_bytes, xlsx_bytes
from minichat_host.domain.attachments import (
    DOCX,
    XLSX,
    InvalidUpload,
    UnsupportedFileType,
    kind_of,
    normalize_content_type,
    provider_filename,
    sanitize_filename,
)
from minichat_host.storage import InvalidImage, LocalIndex, extract_text, make_thumbnail, read_sheet
from minichat_host.storage.index import chunk_text, query_terms

TENANT = "t1"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def docx_bytes(paragraphs: list[str]) -> bytes:
    ns = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>" for text in paragraphs)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr(
            "word/document.xml", f'<w:document xmlns:w="{ns}"><w:body>{body}</w:body></w:document>'
        )
    return buffer.getvalue()


def pptx_bytes(slides: list[str]) -> bytes:
    ns = "http://schemas.openxmlformats.org/drawingml/2006/main"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number, text in enumerate(slides, start=1):
            archive.writestr(
                f"ppt/slides/slide{number}.xml",
                f'<p:sld xmlns:a="{ns}" xmlns:p="p"><a:p><a:t>{text}</a:t></a:p></p:sld>',
            )
    return buffer.getvalue()


def pdf_bytes(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica, built by hand (offsets computed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


# --- text extraction --------------------------------------------------------------------------------
def test_extract_plain_html_docx_pptx_pdf(tmp_path: Path) -> None:
    assert extract_text(write(tmp_path, "a.txt", "\ufeffhéllo wörld".encode())) == "héllo wörld"
    html = b"<!DOCTYPE html><html><head><style>p{}</style><script>var x=1;</script></head>"
    html += b"<body><p>Visible &amp; kept</p></body></html>"
    text = extract_text(write(tmp_path, "a.html", html))
    assert "Visible & kept" in text and "var x" not in text and "p{}" not in text
    assert extract_text(write(tmp_path, "a.docx", docx_bytes(["First para", "Second para"]))).split() == [
        "First",
        "para",
        "Second",
        "para",
    ]
    assert "Slide two" in extract_text(write(tmp_path, "a.pptx", pptx_bytes(["Slide one", "Slide two"])))
    assert "Quarterly revenue grew" in extract_text(
        write(tmp_path, "a.pdf", pdf_bytes("Quarterly revenue grew"))
    )


def test_extract_damaged_documents_as_empty(tmp_path: Path) -> None:
    assert extract_text(write(tmp_path, "bad.pdf", b"%PDF-1.4 garbage")) == ""
    assert extract_text(write(tmp_path, "bad.docx", b"PK\x03\x04 not a zip")) == ""
    assert extract_text(write(tmp_path, "sheet.xlsx", xlsx_bytes([["a", 1]]))) == ""


def test_extract_is_bounded(tmp_path: Path) -> None:
    assert len(extract_text(write(tmp_path, "big.txt", b"x" * 50_000), max_chars=1000)) == 1000


# --- the index ------------------------------------------------------------------------------------
def test_chunks_and_terms() -> None:
    chunks = chunk_text("word " * 1000, size=100)
    assert all(len(c) <= 100 for c in chunks) and "".join(chunks).count("word") == 1000
    assert query_terms('What is the "total" revenue? revenue*') == ["what", "is", "the", "total", "revenue"]


def test_index_search_ranks_snippets_and_scopes(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path / "idx" / "fts.sqlite3")
    fox = write(tmp_path, "fox.txt", b"The quick brown fox jumps over the lazy dog. " * 40)
    cat = write(tmp_path, "cat.txt", b"A cat sleeps all day. Nothing else happens here, except one fox.")
    assert index.add_file(TENANT, "vs1", "f-fox", fox, {"attachment_id": "a-fox", "filename": "fox.txt"}) > 1
    index.add_file(TENANT, "vs1", "f-cat", cat, {"attachment_id": "a-cat"})
    index.add_file(TENANT, "vs2", "f-other", cat, {"attachment_id": "a-other"})
    hits = index.search(TENANT, "vs1", "jumping foxes", 5)  # porter stemming: jumping ~ jumps, foxes ~ fox
    assert hits and hits[0].attachment_id == "a-fox" and hits[0].filename == "fox.txt"
    assert "fox" in hits[0].snippet.lower() and len(hits[0].snippet) < 400
    assert {h.attachment_id for h in hits} <= {"a-fox", "a-cat"}
    assert hits[0].score is not None and 0 < hits[0].score <= 1
    cat_hit = index.search(TENANT, "vs1", "sleeps", 5)
    assert [h.attachment_id for h in cat_hit] == ["a-cat"] and cat_hit[0].filename == "f-cat"
    assert index.search("other-tenant", "vs1", "fox", 5) == []
    assert index.search(TENANT, "vs1", "zebra", 5) == []
    assert index.search(TENANT, "vs1", 'NEAR(fox cat) OR "', 5)  # user text is never FTS syntax
    assert index.file_count(TENANT, "vs1") == 2


def test_index_fallback_replace_remove_and_drop(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path / "fts.sqlite3")
    doc = write(tmp_path, "d.txt", b"Alpha beta gamma.")
    index.add_file(TENANT, "vs", "f1", doc, {"attachment_id": "a1"})
    index.add_file(TENANT, "vs", "f1", doc, {"attachment_id": "a1"})  # a redelivery replaces, never doubles
    assert len(index.search(TENANT, "vs", "alpha", 5)) == 1
    opening = index.search(TENANT, "vs", "summarize this", 5, fallback=True)
    assert [(h.attachment_id, h.snippet, h.score) for h in opening] == [("a1", "Alpha beta gamma.", 0.0)]
    index.remove_file(TENANT, "f1")
    assert index.search(TENANT, "vs", "alpha", 5) == []
    index.add_file(TENANT, "vs", "f2", doc, {"attachment_id": "a2"})
    index.drop_store(TENANT, "vs")
    assert index.file_count(TENANT, "vs") == 0


# --- spreadsheets and images ----------------------------------------------------------------------
def test_read_sheet(tmp_path: Path) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    path = write(
        tmp_path,
        "s.xlsx",
        xlsx_bytes([["region", "revenue", "when"], ["north", 100, when], ["south", 2.5, None], [None, None]]),
    )
    assert read_sheet(path) == [
        ["region", "revenue", "when"],
        ["north", 100, "2026-01-02T03:04:05"],
        ["south", 2.5],
    ]
    assert len(read_sheet(path, max_rows=2)) == 2


def test_thumbnail_fits_and_keeps_aspect(tmp_path: Path) -> None:
    thumb = make_thumbnail(write(tmp_path, "wide.png", png_bytes(1000, 250)))
    assert (thumb.width, thumb.height) == (128, 32) and len(thumb.data) <= 131_072
    assert Image.open(io.BytesIO(thumb.data)).format == "WEBP"
    small = make_thumbnail(write(tmp_path, "small.png", png_bytes(20, 10)))
    assert (small.width, small.height) == (20, 10)  # never enlarged
    buffer = io.BytesIO()
    Image.new("P", (300, 300)).save(buffer, format="GIF")
    assert make_thumbnail(write(tmp_path, "a.gif", buffer.getvalue())).width == 128
    with pytest.raises(InvalidImage):
        make_thumbnail(write(tmp_path, "bad.png", b"\x89PNG\r\n\x1a\nnot really"))
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="BMP")
    with pytest.raises(InvalidImage, match="unsupported image format"):
        make_thumbnail(write(tmp_path, "a.bmp", buffer.getvalue()))


# --- pure upload rules ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "filename", "expected"),
    [
        ("text/plain", "a.txt", "text/plain"),
        ("Text/Plain; charset=UTF-8", "a", "text/plain"),
        ("application/octet-stream", "Notes.MD", "text/markdown"),
        (
            "application/octet-stream",
            "deck.pptx",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ),
        ("application/octet-stream", "doc.docx", DOCX),
        ("application/octet-stream", "s.xlsx", XLSX),
        ("text/csv", "a.csv", "text/plain"),
        ("image/jpg", "a.jpg", "image/jpeg"),
        ("application/javascript", "a.js", "text/javascript"),
    ],
)
def test_normalize_content_type(raw: str, filename: str, expected: str) -> None:
    assert normalize_content_type(raw, filename, allow_csv=True) == expected


@pytest.mark.parametrize(
    ("raw", "filename"),
    [
        ("application/octet-stream", "bad-file.exe"),
        ("application/x-msdownload", "a.exe"),
        ("text/plain\r\nX: y", "a.txt"),
        ("video/mp4", "a.mp4"),
    ],
)
def test_unsupported_content_types(raw: str, filename: str) -> None:
    with pytest.raises(UnsupportedFileType):
        normalize_content_type(raw, filename, allow_csv=True)


def test_missing_content_type_and_disabled_csv() -> None:
    with pytest.raises(InvalidUpload):
        normalize_content_type(None, "a.txt", allow_csv=True)
    with pytest.raises(InvalidUpload):
        normalize_content_type("  ", "a.txt", allow_csv=True)
    with pytest.raises(UnsupportedFileType):
        normalize_content_type("text/csv", "a.csv", allow_csv=False)


def test_kinds_and_provider_filenames() -> None:
    import uuid

    assert kind_of("image/webp") == "image" and kind_of(XLSX) == "document"
    chat, att = uuid.uuid4(), uuid.uuid4()
    assert provider_filename(chat, att, XLSX) == f"{chat}_{att}.xlsx"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "upload"),
        ("", "upload"),
        ("   ", "upload"),
        ("../../etc/passwd", "passwd"),
        ("a/b\\c.txt", "c.txt"),
        ("bad\r\nname\x00.txt", "badname.txt"),
        ("rtl\u202eexe.txt", "rtlexe.txt"),
        ("..", "upload"),
        ("e\u0301t\u00e9.txt", "\u00e9t\u00e9.txt"),
    ],
)
def test_sanitize_filename(raw: str | None, expected: str) -> None:
    assert sanitize_filename(raw) == expected


def test_sanitize_long_filenames() -> None:
    cut = sanitize_filename("x" * 400 + ".docx")
    assert len(cut) == 255 and cut.endswith(".docx")
    no_ext = sanitize_filename("y" * 400)
    assert no_ext == "y" * 255
    weird_ext = sanitize_filename("z" * 300 + "." + "e" * 40)
    assert len(weird_ext) == 255
