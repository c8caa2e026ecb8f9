"""`minichat plugin new`: names derived safely from NAME, refusals, and generated plugins that pass their
own tests, lint and strict type check right after generation."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path, PurePosixPath

import msgspec
import pytest
import yaml
from scaffold_helpers import BIN, output, pytest_in, run

from minichat_host.cli import main
from minichat_host.config import parse_config
from minichat_host.scaffold import (
    CAPABILITIES,
    MAX_NAME_LENGTH,
    ScaffoldError,
    create_plugin,
    plugin_names,
    render,
)

LONGEST_NAME = "abcdefghijk-lmnopqrst-x1"
assert len(LONGEST_NAME) == MAX_NAME_LENGTH


def test_names_are_derived_from_name() -> None:
    names = plugin_names("acme-audit", "audit", vendor="acme")
    assert (names.distribution, names.package, names.entry_point, names.section) == (
        "minichat-acme-audit",
        "minichat_acme_audit",
        "acme_audit",
        "acme_audit",
    )
    assert (names.class_name, names.settings_class, names.title) == (
        "AcmeAuditPlugin",
        "AcmeAuditSettings",
        "Acme Audit",
    )
    assert plugin_names("s3_store2", "storage").vendor == "s3_store2"  # the vendor defaults to NAME


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Acme",
        "1acme",
        "acme--audit",
        "acme-",
        "-acme",
        "acme audit",
        "../acme",
        "acme/x",
        "acmé",
        "minichat-acme",
        "minichat",
        "a" * (MAX_NAME_LENGTH + 1),
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ScaffoldError):
        plugin_names(name)


@pytest.mark.parametrize("vendor", ["", "Acme", "-acme", "acme-", "a b", "a/b", "x" * 65])
def test_bad_vendors_are_refused(vendor: str) -> None:
    with pytest.raises(ScaffoldError, match="invalid vendor"):
        plugin_names("acme", vendor=vendor)


def test_an_unknown_capability_is_refused() -> None:
    with pytest.raises(ScaffoldError, match="unknown capability"):
        plugin_names("acme", "billing")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("local-storage", "built-in plugin"),  # the built-in local storage
        ("audit-log", "already installed"),  # the bundled audit_log entry point
        ("host", "already importable"),  # would be the package minichat_host
    ],
)
def test_names_that_exist_here_are_refused(name: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match=reason):
        create_plugin(name, directory=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_directory_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "plugin"
    target.mkdir()
    (target / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ScaffoldError, match="refusing to overwrite"):
        create_plugin("acme", directory=target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(ScaffoldError, match="refusing to overwrite"):
        create_plugin("acme", directory=a_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "plugin"]  # no staging left behind


def test_an_empty_directory_is_filled(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    result = create_plugin("acme", directory=target)
    assert result.directory == target
    assert (target / "pyproject.toml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_rendered_files(capability: str) -> None:
    files = render(plugin_names("acme-x", capability, vendor="acme"))
    assert sorted(map(str, files)) == [
        "README.md",
        "minichat_acme_x/__init__.py",
        "minichat_acme_x/plugin.py",
        "minichat_acme_x/py.typed",
        "minichat_acme_x/settings.py",
        "pyproject.toml",
        "tests/conftest.py",
        "tests/test_plugin.py",
    ]
    for path, text in files.items():
        assert "{{" not in text and "__package__" not in str(path), path
        if path.suffix == ".py":
            compile(text, str(path), "exec")
    pyproject = files[PurePosixPath("pyproject.toml")]
    assert '[project.entry-points.minichat]\nacme_x = "minichat_acme_x.plugin:AcmeXPlugin"' in pyproject


def test_cli_creates_a_plugin_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "acme"
    code = main(
        [
            "plugin",
            "new",
            "acme-files",
            "--capability",
            "storage",
            "--vendor",
            "acme",
            "--dir",
            str(target),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["directory"] == str(target)
    assert result["entry_point"] == "acme_files"
    assert result["vendor"] == "acme"
    assert result["config_key"] == "providers.<id>.storage"
    assert "minichat_acme_files/plugin.py" in result["files"]
    assert (target / "minichat_acme_files" / "plugin.py").exists()


def test_cli_text_output_says_what_to_do_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["plugin", "new", "acme-audit", "--vendor", "acme"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("created minichat-acme-audit: audit plugin 'acme_audit' for vendor 'acme'")
    assert "pip install -e minichat-acme-audit" in out
    assert "plugins.audit_vendor: acme" in out
    assert (tmp_path / "minichat-acme-audit" / "README.md").exists()


def test_cli_refusals_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugin", "new", "Bad_Name", "--dir", str(tmp_path / "x")]) == 2
    assert "invalid plugin name" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("", encoding="utf-8")
    assert main(["plugin", "new", "acme", "--dir", str(tmp_path / "taken")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse: an unknown capability is a usage error
        main(["plugin", "new", "acme", "--capability", "billing"])
    assert exited.value.code == 2


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One plugin per capability, with the longest allowed NAME (the lines must still fit)."""
    root = tmp_path_factory.mktemp("generated")
    return {
        capability: create_plugin(
            LONGEST_NAME[: MAX_NAME_LENGTH - 1] + str(index),
            capability=capability,
            vendor=f"vendor-{capability}",
            directory=root / capability,
        ).directory
        for index, capability in enumerate(CAPABILITIES)
    }


@pytest.mark.slow
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_generated_tests_pass(generated: dict[str, Path], capability: str) -> None:
    result = pytest_in(generated[capability], installed=False)
    assert result.returncode == 0, output(result)
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_generated_code_is_lint_clean(generated: dict[str, Path], capability: str) -> None:
    directory = generated[capability]
    for command in (["check", "."], ["format", "--check", "."]):
        result = run([str(BIN / "ruff"), *command], directory)
        assert result.returncode == 0, output(result)


@pytest.mark.slow
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_generated_code_passes_strict_mypy(generated: dict[str, Path], capability: str) -> None:
    directory = generated[capability]
    result = run([sys.executable, "-m", "mypy", "--no-incremental", "."], directory, pythonpath=directory)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_the_readme_config_example_is_valid(
    generated: dict[str, Path], capability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's YAML is a valid minichat config whose section decodes with the generated struct."""
    directory = generated[capability]
    readme = (directory / "README.md").read_text(encoding="utf-8")
    [example] = re.findall(r"^```yaml\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    config = parse_config(yaml.safe_load(example), env={})
    monkeypatch.syspath_prepend(str(directory))
    [package] = [p.name for p in directory.iterdir() if p.name.startswith("minichat_")]
    settings = importlib.import_module(f"{package}.settings")
    section = config.plugins.settings[settings.SECTION]
    struct = next(v for k, v in vars(settings).items() if k.endswith("Settings") and isinstance(v, type))
    decoded = msgspec.convert(section, struct, strict=False)
    assert decoded.vendor == f"vendor-{capability}"
