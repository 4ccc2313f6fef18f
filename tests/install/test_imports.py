"""Every third-party module the package imports is declared, in the extra that needs it.

A clean install has only what `pyproject.toml` declares; the dev extras installed here would hide
an undeclared import (sniffio did exactly that). This reads the package's source, not the
environment, so it fails whatever happens to be installed. `check_install.py` (run by
`make test`) then proves it on real fresh installs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "stabilizer_asgi"

EXTRA_OF = {
    "stabilizer_asgi.client": "client",
    "stabilizer_asgi.cli": "server",
    "stabilizer_asgi.backends.redis": "redis",
    "stabilizer_asgi.prometheus": "metrics",
    "stabilizer_asgi.otel": "otel",
}
"""Modules (and their submodules) that may import what an extra declares, besides the core."""

ONLY_WHERE_RUNNING = {("stabilizer_asgi.asgi._runtime", "trio")}
"""(module, import) pairs imported only once the app already runs on that library."""


def declared() -> dict[str | None, set[str]]:
    """Distribution names per extra (None: the core `dependencies`), from the installed
    metadata (`make` reinstalls the package whenever pyproject.toml changes)."""
    out: dict[str | None, set[str]] = {}
    for requirement in importlib.metadata.requires("stabilizer-asgi") or []:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert name is not None, requirement
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        out.setdefault(extra and extra.group(1), set()).add(normalize(name.group(0)))
    return out


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of every absolute, non-stdlib import in `path` (lazy ones included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top != "stabilizer_asgi":
                found.add(top)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_import_is_declared_in_the_extra_of_the_module_that_needs_it() -> None:
    """Each non-stdlib import of each module is a core dependency or, for a module that needs
    an extra (client, cli, a backend), a requirement of that extra."""
    requirements = declared()
    distributions = importlib.metadata.packages_distributions()
    undeclared: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        extra = next(
            (x for m, x in EXTRA_OF.items() if module == m or module.startswith(m + ".")), None
        )
        allowed = requirements.get(None, set()) | requirements.get(extra, set())
        for top in sorted(third_party_imports(path)):
            if (module, top) in ONLY_WHERE_RUNNING:
                continue
            dists = {normalize(d) for d in distributions.get(top, [top])}
            if not dists & allowed:
                where = f"[{extra}]" if extra else "dependencies"
                undeclared.append(f"{module} imports {top!r}, not in {where}")
    assert not undeclared, "\n".join(undeclared)
