"""Plugin scaffolding for `minichat plugin new`: a working plugin distribution rendered from templates.

The templates are package data under `templates/`: `common/` is used for every capability, then
`<capability>/` adds (or replaces) files. In a template's path and text, `{{key}}` placeholders are
replaced by `PluginNames.placeholders()`, the directory `__package__` becomes the package name and the
`.tmpl` suffix is dropped (so the host's own lint, type check and test collection never see templates).

Names are derived from NAME so that nothing clashes: `acme-audit` gives the distribution
`minichat-acme-audit`, the package `minichat_acme_audit`, the entry point, plugin name and settings section
`acme_audit`, and the class `AcmeAuditPlugin`.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import uuid
from dataclasses import dataclass
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Final

from minichat_host import __version__ as host_version
from minichat_host import constants
from minichat_host.plugins.builtin import BUILTIN_PLUGINS

CAPABILITIES: Final = ("audit", "model_policy", "storage")
MAX_NAME_LENGTH: Final = 24
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_VENDOR = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_TEMPLATE_SUFFIX = ".tmpl"
_PACKAGE_DIR = "__package__"


class ScaffoldError(ValueError):
    """NAME, vendor or target directory refused; the message says why and what to do instead."""


@dataclass(frozen=True)
class PluginNames:
    """Every name of one scaffolded plugin, derived from NAME."""

    name: str
    capability: str
    vendor: str
    distribution: str
    package: str
    entry_point: str
    class_name: str
    settings_class: str
    title: str

    @property
    def section(self) -> str:
        """The settings section (`plugins.settings.<section>`): the entry point name, like bundled plugins."""
        return self.entry_point

    def placeholders(self) -> dict[str, str]:
        return {
            "name": self.name,
            "capability": self.capability,
            "vendor": self.vendor,
            "distribution": self.distribution,
            "package": self.package,
            "entry_point": self.entry_point,
            "section": self.section,
            "class_name": self.class_name,
            "settings_class": self.settings_class,
            "title": self.title,
            "host_version": host_version,
        }


@dataclass(frozen=True)
class Scaffolded:
    """What `create_plugin` wrote: the names, the new directory and its files (relative, sorted)."""

    names: PluginNames
    directory: Path
    files: tuple[PurePosixPath, ...]


def plugin_names(name: str, capability: str = "audit", vendor: str | None = None) -> PluginNames:
    """Validate NAME, the capability and the vendor and derive the plugin's names from them."""
    if capability not in CAPABILITIES:
        raise ScaffoldError(f"unknown capability {capability!r}; choose one of {', '.join(CAPABILITIES)}")
    if not _NAME.match(name) or len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(
            f"invalid plugin name {name!r}: use lowercase letters, digits and single '-' or '_' between "
            f"them, starting with a letter, at most {MAX_NAME_LENGTH} characters (e.g. acme-audit)"
        )
    entry_point = name.replace("-", "_")
    if entry_point == "minichat" or entry_point.startswith("minichat_"):
        raise ScaffoldError(
            f"invalid plugin name {name!r}: leave out the 'minichat' prefix, the scaffold adds it "
            "(NAME acme-audit gives the distribution minichat-acme-audit)"
        )
    chosen_vendor = name if vendor is None else vendor
    if not _VENDOR.match(chosen_vendor):
        raise ScaffoldError(
            f"invalid vendor {chosen_vendor!r}: use lowercase letters, digits, '.', '-' or '_' "
            "(at most 64 characters, starting and ending with a letter or digit)"
        )
    parts = entry_point.split("_")
    camel = "".join(part[:1].upper() + part[1:] for part in parts)
    return PluginNames(
        name=name,
        capability=capability,
        vendor=chosen_vendor,
        distribution=f"minichat-{entry_point.replace('_', '-')}",
        package=f"minichat_{entry_point}",  # the name pattern makes it an identifier
        entry_point=entry_point,
        class_name=f"{camel}Plugin",
        settings_class=f"{camel}Settings",
        title=" ".join(part[:1].upper() + part[1:] for part in parts),
    )


def check_not_installed(names: PluginNames) -> None:
    """Refuse names that already exist here: a plugin name the host knows, or an importable package."""
    builtin = {plugin_name for plugin_name, _ in BUILTIN_PLUGINS}
    if names.entry_point in builtin:
        raise ScaffoldError(
            f"plugin name {names.entry_point!r} is taken by a built-in plugin; pick another NAME"
        )
    for entry_point in metadata.entry_points(group=constants.ENTRY_POINT_GROUP):
        if entry_point.name == names.entry_point:
            owner = entry_point.dist.name if entry_point.dist is not None else "an unknown distribution"
            raise ScaffoldError(
                f"plugin name {names.entry_point!r} is already installed (entry point of {owner}); "
                "pick another NAME"
            )
    if importlib.util.find_spec(names.package) is not None:
        raise ScaffoldError(
            f"a package named {names.package!r} is already importable here; pick another NAME"
        )


def render(names: PluginNames) -> dict[PurePosixPath, str]:
    """Every file of the distribution: relative path -> text."""
    templates = resources.files(__name__).joinpath("templates")
    values = names.placeholders()
    files: dict[PurePosixPath, str] = {}
    for layer in ("common", names.capability):
        for relative, template in _walk(templates.joinpath(layer), PurePosixPath()):
            target = _fill(str(relative), values).removesuffix(_TEMPLATE_SUFFIX)
            target = target.replace(_PACKAGE_DIR, names.package)
            files[PurePosixPath(target)] = _fill(template.read_text(encoding="utf-8"), values)
    return dict(sorted(files.items()))


def create_plugin(
    name: str,
    *,
    capability: str = "audit",
    vendor: str | None = None,
    directory: str | Path | None = None,
) -> Scaffolded:
    """Write a new plugin distribution into `directory` (default `./<distribution>`).

    The directory must not exist, or be empty. Files are written into a hidden sibling directory first and
    moved into place at the end, so a failure leaves nothing half-written.
    """
    names = plugin_names(name, capability, vendor)
    check_not_installed(names)
    target = Path(directory) if directory is not None else Path.cwd() / names.distribution
    target = target.expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(
            f"{target} already exists and is not an empty directory; refusing to overwrite it"
        )
    files = render(names)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        for relative, text in files.items():
            path = staging.joinpath(*relative.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if target.exists():
            target.rmdir()  # empty (checked above); replaced by the staged tree
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Scaffolded(names=names, directory=target, files=tuple(files))


def _walk(node: Traversable, prefix: PurePosixPath) -> list[tuple[PurePosixPath, Traversable]]:
    found: list[tuple[PurePosixPath, Traversable]] = []
    for child in sorted(node.iterdir(), key=lambda item: item.name):
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            found += _walk(child, prefix / child.name)
        elif child.name.endswith(_TEMPLATE_SUFFIX):
            found.append((prefix / child.name, child))
    return found


def _fill(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return _PLACEHOLDER.sub(replace, text)


__all__ = [
    "CAPABILITIES",
    "PluginNames",
    "ScaffoldError",
    "Scaffolded",
    "check_not_installed",
    "create_plugin",
    "plugin_names",
    "render",
]
