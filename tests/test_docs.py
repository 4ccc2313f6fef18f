"""The documentation keeps in step with the code: the configuration table in
`docs/configuration.md` matches `StabilizerConfig`, name for name and default for default, and
every page under `docs/` is reachable from the `mkdocs.yml` nav."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from stabilizer_asgi import StabilizerConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"


def config_rows() -> list[tuple[str, str]]:
    """(name, default) of every row of the configuration table, in order, repeats kept."""
    text = CONFIGURATION.read_text()
    assert text.startswith("# Configuration\n"), "docs/configuration.md lost its title"
    return re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \|", text, flags=re.M)


def test_every_field_is_documented_once_with_its_default() -> None:
    """docs/configuration.md has one row per StabilizerConfig field, with its default."""
    rows = config_rows()
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"documented twice: {names}"
    table = dict(rows)
    fields = {f.name: f for f in dataclasses.fields(StabilizerConfig)}
    assert sorted(table) == sorted(fields)
    for name, field in fields.items():
        assert table[name] == repr(field.default).replace("'", '"'), name


def nav_pages(node: Any) -> list[str]:
    """Every page path named in a mkdocs nav (nested sections included)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    raise AssertionError(f"unexpected nav entry {node!r}")


def test_every_docs_page_is_in_the_nav() -> None:
    """Every docs/*.md page is in the mkdocs.yml nav, and every nav entry is a page that exists."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    assert sorted(listed) == pages


def test_examples_import() -> None:
    """The example apps import and expose an ASGI app."""
    from examples import chat, fastapi_app

    assert chat.app is not None and fastapi_app.app is not None
