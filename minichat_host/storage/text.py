"""Plain text out of an uploaded document, for the local full-text index.

The format is sniffed from the bytes (the index is fed by storage hooks that only know a file id):
`%PDF-` → pypdf; a ZIP with `word/document.xml` (docx) or `ppt/slides/` (pptx) → the XML text runs;
anything else is decoded as UTF-8 (invalid bytes replaced), with HTML reduced to its visible text.
Every reader is bounded (`max_chars`, and a cap on decompressed XML) so a hostile file costs little.
Spreadsheets are not indexed (they go to the code interpreter) and yield "".
"""

from __future__ import annotations

import html.parser
import logging
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from xml.etree import ElementTree

log = logging.getLogger(__name__)

DEFAULT_MAX_CHARS: Final = 2_000_000
_MAX_RAW_TEXT_BYTES: Final = 2 * 1024 * 1024  # text past this is not indexed (bounds memory)
_MAX_XML_BYTES: Final = 32 * 1024 * 1024  # decompressed, per document part
_SNIFF_BYTES: Final = 1024

_W_NS: Final = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_A_NS: Final = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
_SLIDE_NAME: Final = re.compile(r"^ppt/slides/slide(\d+)\.xml$")


def extract_text(path: Path, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The document's text (at most `max_chars` characters); "" when nothing readable is in it."""
    with Path(path).open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    try:
        if head.startswith(b"%PDF-"):
            return _pdf_text(path, max_chars)
        if head.startswith(b"PK\x03\x04"):
            return _office_text(path, max_chars)
    except Exception as exc:  # a damaged document is indexed as empty, never a failed upload
        log.warning("cannot extract text from %s: %s: %s", path.name, type(exc).__name__, exc)
        return ""
    return _plain_text(path, head, max_chars)


def _plain_text(path: Path, head: bytes, max_chars: int) -> str:
    with Path(path).open("rb") as handle:
        raw = handle.read(_MAX_RAW_TEXT_BYTES)
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
    lowered = head[:_SNIFF_BYTES].lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<body" in lowered:
        text = _html_text(text)
    return text[:max_chars]


class _VisibleText(html.parser.HTMLParser):
    _SKIPPED: Final = frozenset({"script", "style", "template", "noscript"})
    _BLOCKS: Final = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIPPED:
            self._skip_depth += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED and self._skip_depth:
            self._skip_depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def _html_text(markup: str) -> str:
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    return re.sub(r"[ \t\r\f\v]+", " ", "".join(parser.parts)).strip()


def _pdf_text(path: Path, max_chars: int) -> str:
    from pypdf import PdfReader  # imported lazily: only PDFs need it

    reader = PdfReader(str(path))
    parts: list[str] = []
    size = 0
    for page in reader.pages:
        text = page.extract_text() or ""
        parts.append(text)
        size += len(text)
        if size >= max_chars:
            break
    return "\n\n".join(parts)[:max_chars]


def _office_text(path: Path, max_chars: int) -> str:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if "word/document.xml" in names:
            runs = _xml_runs(archive, "word/document.xml", f"{_W_NS}t", f"{_W_NS}p")
            return _join_bounded(runs, max_chars)
        slides = sorted(
            (int(m.group(1)), name) for name in names if (m := _SLIDE_NAME.match(name)) is not None
        )
        if slides:

            def all_slides() -> Iterator[str]:
                for _, name in slides:
                    yield from _xml_runs(archive, name, f"{_A_NS}t", f"{_A_NS}p")
                    yield "\n\n"

            return _join_bounded(all_slides(), max_chars)
    return ""


def _xml_runs(archive: zipfile.ZipFile, name: str, text_tag: str, paragraph_tag: str) -> Iterator[str]:
    """Text runs of one OOXML part, a newline after each paragraph; stops at `_MAX_XML_BYTES`."""
    if archive.getinfo(name).file_size > _MAX_XML_BYTES:
        raise ValueError(f"{name} is larger than {_MAX_XML_BYTES} bytes once decompressed")
    with archive.open(name) as part:
        for _event, element in ElementTree.iterparse(part, events=("end",)):
            if element.tag == text_tag and element.text:
                yield element.text
            elif element.tag == paragraph_tag:
                yield "\n"
                element.clear()


def _join_bounded(pieces: Iterator[str], max_chars: int) -> str:
    parts: list[str] = []
    size = 0
    for piece in pieces:
        parts.append(piece)
        size += len(piece)
        if size >= max_chars:
            break
    return "".join(parts)[:max_chars]
