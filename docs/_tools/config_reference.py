"""Generate docs/configuration.md from the msgspec structs in minichat_host/config.py.

Types, defaults and ranges come from the structs themselves (msgspec.inspect), descriptions and examples
from docs/_tools/config_keys.yaml, so the reference cannot drift from the code: tests/docs compares the
committed page with this output and fails when they differ.

    .venv/bin/python docs/_tools/config_reference.py            # rewrite docs/configuration.md
    .venv/bin/python docs/_tools/config_reference.py --check    # exit 1 when the page is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import yaml

from minichat_host.config import Config

DOCS = Path(__file__).resolve().parents[1]
NOTES_FILE = DOCS / "_tools" / "config_keys.yaml"
OUTPUT = DOCS / "configuration.md"
REGENERATE = ".venv/bin/python docs/_tools/config_reference.py"
TOP_LEVEL = "top level"
# Placeholders for the keys of mappings of sections, as written in config_keys.yaml and the page.
MAP_PLACEHOLDERS = {"providers": "<id>", "outbox.queues": "<queue>"}
LONG_DEFAULT = 48  # longer defaults are shown in the section's YAML block only


class ConfigDocsError(Exception):
    """config_keys.yaml does not match the structs (an undocumented or a stale key)."""


@dataclass(frozen=True)
class Key:
    path: str
    type_text: str
    default: Any


@dataclass(frozen=True)
class Section:
    path: str  # "" for the top level
    keys: tuple[Key, ...]
    defaults: Any  # the section's default value, as builtins (for the YAML block)


def _bounds(info: mi.IntType | mi.FloatType) -> str:
    low = f"≥ {info.ge:g}" if info.ge is not None else f"> {info.gt:g}" if info.gt is not None else ""
    high = f"≤ {info.le:g}" if info.le is not None else f"< {info.lt:g}" if info.lt is not None else ""
    if info.ge is not None and info.le is not None:
        return f"{info.ge:g} to {info.le:g}"
    return ", ".join(part for part in (low, high) if part)


def type_text(info: mi.Type) -> str:
    """A short human name of a msgspec type, with its range."""
    if isinstance(info, mi.BoolType):
        return "boolean"
    if isinstance(info, mi.StrType):
        return "string"
    if isinstance(info, mi.IntType | mi.FloatType):
        name = "integer" if isinstance(info, mi.IntType) else "number"
        bounds = _bounds(info)
        return f"{name}, {bounds}" if bounds else name
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(f"`{value}`" for value in info.values)
    if isinstance(info, mi.ListType):
        return f"list of {type_text(info.item_type)}"
    if isinstance(info, mi.DictType):
        return f"mapping of {type_text(info.key_type)} to {type_text(info.value_type)}"
    if isinstance(info, mi.AnyType):
        return "any"
    if isinstance(info, mi.StructType):
        return "section"
    raise ConfigDocsError(f"no description of the msgspec type {info!r}; teach type_text() about it")


def _key(path: str, info: mi.Type, value: Any) -> Key:
    return Key(path, type_text(info), msgspec.to_builtins(value))


def _is_map_of_sections(info: mi.Type) -> bool:
    return isinstance(info, mi.DictType) and isinstance(info.value_type, mi.StructType)


def _entry_keys(path: str, info: mi.DictType) -> list[Key]:
    """The keys of one entry of a mapping of sections (`providers.<id>.kind`), with the entry's defaults."""
    if path not in MAP_PLACEHOLDERS:
        raise ConfigDocsError(f"{path} is a mapping of sections: add its placeholder to MAP_PLACEHOLDERS")
    struct = info.value_type
    assert isinstance(struct, mi.StructType)
    entry = struct.cls()
    prefix = f"{path}.{MAP_PLACEHOLDERS[path]}"
    return [_key(f"{prefix}.{f.name}", f.type, getattr(entry, f.name)) for f in struct.fields]


def _sections_of(path: str, info: mi.StructType, value: Any) -> list[Section]:
    """A section's own keys (mappings of sections inline), then its nested sections."""
    keys: list[Key] = []
    nested: list[Section] = []
    own_defaults: dict[str, Any] = {}
    for field in info.fields:
        field_path = f"{path}.{field.name}"
        field_value = getattr(value, field.name)
        if isinstance(field.type, mi.StructType):
            nested += _sections_of(field_path, field.type, field_value)
            continue
        keys.append(_key(field_path, field.type, field_value))
        if isinstance(field.type, mi.DictType) and _is_map_of_sections(field.type):
            keys += _entry_keys(field_path, field.type)
        own_defaults[field.name] = msgspec.to_builtins(field_value)
    return [Section(path, tuple(keys), own_defaults), *nested]


def sections() -> list[Section]:
    """The top level, then every section of Config in struct order (nested sections after their parent)."""
    info = mi.type_info(Config)
    assert isinstance(info, mi.StructType)
    config = Config()
    top: list[Key] = []
    found: list[Section] = []
    for field in info.fields:
        value = getattr(config, field.name)
        if isinstance(field.type, mi.StructType):
            found += _sections_of(field.name, field.type, value)
        elif isinstance(field.type, mi.DictType) and _is_map_of_sections(field.type):
            keys = [_key(field.name, field.type, value), *_entry_keys(field.name, field.type)]
            found.append(Section(field.name, tuple(keys), msgspec.to_builtins(value)))
        else:
            top.append(_key(field.name, field.type, value))
    return [Section("", tuple(top), {key.path: key.default for key in top}), *found]


def load_notes(path: Path | None = None) -> tuple[dict[str, str], dict[str, tuple[str, Any]]]:
    """(section descriptions, key -> (description, example or None)) from config_keys.yaml."""
    raw = yaml.safe_load((path or NOTES_FILE).read_text(encoding="utf-8"))
    section_docs: dict[str, str] = {str(k): str(v) for k, v in raw["sections"].items()}
    keys: dict[str, tuple[str, Any]] = {}
    for key, value in raw["keys"].items():
        if isinstance(value, dict):
            keys[str(key)] = (str(value["doc"]), value.get("example"))
        else:
            keys[str(key)] = (str(value), None)
    return section_docs, keys


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _inline(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return f"`{text}`"


def _example(value: Any) -> str:
    # YAML flow style: what the user writes after the key.
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000, allow_unicode=True)
    text = text.strip()
    return f"`{text.removesuffix('...').strip()}`"


def _section_yaml(section: Section) -> str:
    if not section.path:
        body: Any = {key.path: key.default for key in section.keys}
    else:
        body = section.defaults
        for part in reversed(section.path.split(".")):
            body = {part: body}
    return yaml.safe_dump(body, sort_keys=False, width=100, allow_unicode=True)


def _title(section: Section) -> str:
    return section.path or TOP_LEVEL


def reference_markdown() -> str:
    """The whole docs/configuration.md; raises ConfigDocsError when config_keys.yaml does not fit."""
    section_docs, key_notes = load_notes()
    all_sections = sections()
    documented: set[str] = set()
    missing: list[str] = []
    out: list[str] = [
        "# Configuration reference",
        "",
        "<!-- Generated from minichat_host/config.py and docs/_tools/config_keys.yaml; do not edit by hand.",
        f"     Regenerate with: {REGENERATE} -->",
        "",
        "minichat reads one YAML file: `--config FILE` on any command, else `$MINICHAT_CONFIG`, else none at",
        "all (the embedded defaults below). Every key has a default, so a file holds only what differs.",
        "",
        "- `${VAR}` and `${VAR:-default}` are expanded in every string; a missing variable without a default",
        "  stops the start with the key path (`$.auth.jwt.secret: environment variable ${JWT_SECRET} is not",
        "  set`).",
        "- Unknown keys, wrong types and values out of range stop the start with the key path, e.g.",
        "  `Expected int, got str - at $.server.port`.",
        "- `minichat config check` validates a file and prints the effective config with secrets masked",
        "  (keys named like `secret`, `password`, `api_key`, `token`, and passwords inside URLs).",
        "- `MINICHAT_HOME` sets the data directory when `server.data_dir` is empty.",
        "",
        "Sections: " + " · ".join(f"[{_title(s)}](#{_anchor(s)})" for s in all_sections),
        "",
    ]
    for section in all_sections:
        title = _title(section)
        documented.add(title)
        if title not in section_docs:
            missing.append(f"section {title!r}")
        out += [f"## {title}", "", _cell(section_docs.get(title, "")), ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for key in section.keys:
            documented.add(key.path)
            if key.path not in key_notes:
                missing.append(key.path)
            out.append(_row(key, *key_notes.get(key.path, ("", None))))
        out += ["", "Defaults:", "", "```yaml", _section_yaml(section).rstrip("\n"), "```", ""]
    stale = sorted((set(key_notes) | set(section_docs)) - documented)
    problems = [f"no description in {NOTES_FILE.name} for: {', '.join(missing)}"] if missing else []
    if stale:
        problems.append(f"{NOTES_FILE.name} describes keys that do not exist: {', '.join(stale)}")
    if problems:
        raise ConfigDocsError("; ".join(problems))
    return "\n".join(out).rstrip("\n") + "\n"


def _anchor(section: Section) -> str:
    """The id mkdocs gives the section's heading (`auth.jwt` -> `authjwt`, `top level` -> `top-level`)."""
    return _title(section).replace(" ", "-").replace(".", "")


def _row(key: Key, description: str, example: Any) -> str:
    default = _inline(key.default)
    if len(default) > LONG_DEFAULT:
        default = "(see Defaults below)"
    text = _cell(description)
    if example is not None:
        text += f" Example: {_example(example)}"
    return f"| `{key.path}` | {_cell(key.type_text)} | {default} | {text} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when docs/configuration.md is out of date"
    )
    args = parser.parse_args(argv)
    try:
        text = reference_markdown()
    except ConfigDocsError as exc:
        print(f"config_reference: {exc}", file=sys.stderr)
        return 2
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if args.check:
        if current != text:
            print(f"{OUTPUT} is out of date with minichat_host/config.py; run: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
