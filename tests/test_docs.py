"""The README's configuration table must match `StabilizerConfig`, name for name and default
for default, so the documentation cannot drift from the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from stabilizer_asgi import StabilizerConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def config_table() -> dict[str, str]:
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \|", section, flags=re.M)
    return dict(rows)


def test_every_field_is_documented_once_with_its_default() -> None:
    table = config_table()
    fields = {f.name: f for f in dataclasses.fields(StabilizerConfig)}
    assert sorted(table) == sorted(fields)
    for name, field in fields.items():
        assert table[name] == repr(field.default).replace("'", '"'), name


def test_examples_import() -> None:
    from examples import chat, fastapi_app

    assert chat.app is not None and fastapi_app.app is not None
