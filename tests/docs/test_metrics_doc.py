"""docs/metrics.md lists every Prometheus metric the code defines (under its exposed name)."""

from __future__ import annotations

import re
from pathlib import Path

from doc_snippets import DOCS

PACKAGE = DOCS.parent / "minichat_host"
# `Counter("name", ...)`: counters are exposed with a `_total` suffix, other types under their name.
METRIC = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")


def defined_metrics() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for source in PACKAGE.rglob("*.py"):
        for kind, name in METRIC.findall(source.read_text(encoding="utf-8")):
            exposed = f"{name.removesuffix('_total')}_total" if kind == "Counter" else name
            found[exposed] = source
    return found


def test_metrics_are_found() -> None:
    assert "minichat_outbox_delivered_total" in defined_metrics()


def test_every_metric_is_documented() -> None:
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    missing = sorted(
        f"{name} ({source.relative_to(DOCS.parent)})"
        for name, source in defined_metrics().items()
        if f"`{name}`" not in text
    )
    assert not missing, f"docs/metrics.md lacks: {', '.join(missing)}"


def test_every_documented_metric_exists() -> None:
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(minichat_\w+)` \|", text, re.MULTILINE))
    assert documented <= set(defined_metrics()), sorted(documented - set(defined_metrics()))
