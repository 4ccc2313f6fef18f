"""Clean-install check, run by `make test` (`make check-install`).

Builds the wheel, then on the oldest and the newest Python the package claims (its
`Programming Language :: Python :: 3.x` classifiers), each in fresh venvs:

- the wheel alone (no extra): every module imports, except the ones that need an extra, which
  name it (`probe_bare.py`); the middleware serves a request;
- the wheel with `[server,client]`: `stabilizer-asgi --version` agrees with the metadata and
  `__version__`; `stabilizer-asgi serve` runs a bare ASGI app (`bare_app.py`) on a free port;
  the package's own client round-trips one message and leaves its `async with` block right
  after `recv()`; the close is prompt, the app sees 1000, the server ends the session (none
  left connected or detached) and stops cleanly on SIGTERM (`probe_client.py`).

Interpreters are found under pyenv (`$PYENV_ROOT`, `pyenv root`, `~/.pyenv`) or as `python3.X`
on PATH. A missing one fails the check when `CI` is set (true/1/yes), and is skipped with a
warning otherwise. Packages come from pip's index and cache, as a user's install would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOKEN = "install-check-admin-token"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]


class CheckFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"check-install: {message}", flush=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def run(command: list[str], *, timeout: float, cwd: Path, env: dict[str, str]) -> str:
    """Run `command`; its stdout, or CheckFailed with everything it printed."""
    try:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"timed out after {timeout}s: {' '.join(command)}") from exc
    if done.returncode != 0:
        raise CheckFailed(
            f"exit {done.returncode}: {' '.join(command)}\n{done.stdout}{done.stderr}".rstrip()
        )
    return done.stdout


def claimed_pythons() -> tuple[str, str]:
    """The oldest and newest `3.x` of the classifiers; requires-python must start at the
    oldest."""
    text = (ROOT / "pyproject.toml").read_text()
    versions = sorted(
        set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)),
        key=lambda v: tuple(map(int, v.split("."))),
    )
    if not versions:
        raise CheckFailed("pyproject.toml has no 'Programming Language :: Python :: 3.x'")
    floor = re.search(r'^requires-python\s*=\s*">=\s*(3\.\d+)"', text, re.M)
    if floor is None or floor.group(1) != versions[0]:
        raise CheckFailed(f"requires-python does not start at the oldest classifier {versions[0]}")
    return versions[0], versions[-1]


def pyenv_roots() -> list[Path]:
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                roots.append(Path(out.stdout.strip()))
    roots.append(Path.home() / ".pyenv")
    return roots


def find_python(version: str) -> Path | None:
    """The newest patch release of `version` under pyenv, else `python3.X` on PATH."""
    candidates: list[tuple[int, Path]] = []
    for root in pyenv_roots():
        for path in (root / "versions").glob(f"{version}.*/bin/python"):
            patch = re.fullmatch(rf"{re.escape(version)}\.(\d+)", path.parent.parent.name)
            if patch:  # not a free-threaded or -dev build
                candidates.append((int(patch.group(1)), path))
    ordered = [path for _, path in sorted(candidates, reverse=True)]
    on_path = shutil.which(f"python{version}")
    if on_path:
        ordered.append(Path(on_path))
    for path in ordered:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(path), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if out.stdout.strip() == version:
                return path
    return None


def clean_env() -> dict[str, str]:
    """The caller's environment without what would leak the dev setup into a "fresh" one."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "STABILIZER_")) and k not in ("VIRTUAL_ENV", "PIP_USER")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def build_wheel(out: Path, env: dict[str, str]) -> tuple[Path, str]:
    """Build the wheel; check it holds the static client, py.typed and LICENSE, and that its
    version is `__version__` (the only place that sets it)."""
    out.mkdir()
    run([*PIP, "wheel", "--no-deps", "-w", str(out), str(ROOT)], timeout=300, cwd=out, env=env)
    (wheel,) = out.glob("stabilizer_asgi-*.whl")
    source = (ROOT / "stabilizer_asgi" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', source, re.M)
    if found is None:
        raise CheckFailed("no __version__ in stabilizer_asgi/__init__.py")
    version = found.group(1)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"stabilizer_asgi-{version}.dist-info/METADATA").decode()
    for needed in (
        "stabilizer_asgi/py.typed",
        "stabilizer_asgi/static/stabilizer-client.js",
        "stabilizer_asgi/static/dashboard.html",
        f"stabilizer_asgi-{version}.dist-info/licenses/LICENSE",
    ):
        if needed not in names:
            raise CheckFailed(f"the wheel lacks {needed}")
    if f"\nVersion: {version}\n" not in metadata:
        raise CheckFailed(f"the wheel's metadata version is not __version__ {version}")
    return wheel, version


def make_venv(python: Path, where: Path, requirement: str, env: dict[str, str]) -> Path:
    """A fresh venv at `where` holding `requirement` and its dependencies; its python."""
    run(
        [str(python), "-m", "venv", "--without-pip", str(where)],
        timeout=120,
        cwd=where.parent,
        env=env,
    )
    venv_python = where / "bin" / "python"
    run(
        [*PIP, "--python", str(venv_python), "install", requirement],
        timeout=300,
        cwd=where.parent,
        env=env,
    )
    return venv_python


@contextlib.contextmanager
def sidecar(venv: Path, workdir: Path, env: dict[str, str]) -> Iterator[tuple[int, list[str]]]:
    """`stabilizer-asgi serve bare_app:app` on a free port: (port, its stdout lines so far).
    On leaving, SIGTERM; the server must drain and stop within a bound."""
    app_dir = workdir / "app"
    app_dir.mkdir()
    shutil.copy(HERE / "bare_app.py", app_dir / "bare_app.py")
    command = [
        str(venv / "bin" / "stabilizer-asgi"), "serve", "bare_app:app", "--app-dir", str(app_dir),
        "--port", "0", "--admin-token", TOKEN, "--secret", "install-check",
        "--drain-period", "0", "--log-level", "info",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=into.extend, args=(stream,), daemon=True)
        for stream, into in ((proc.stdout, out), (proc.stderr, err))
    ]
    for reader in readers:
        reader.start()

    def output() -> str:
        return "".join(out + err)

    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None:
            found = re.search(r"http://127\.0\.0\.1:(\d+)", "".join(err))
            if found:
                port = int(found.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(f"stabilizer-asgi serve did not start:\n{output()}")
            else:
                time.sleep(0.02)
        try:
            yield port, out
        except CheckFailed as exc:
            raise CheckFailed(f"{exc}\n-- server output:\n{output()}") from None
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the server did not stop on SIGTERM:\n{output()}") from None
        for reader in readers:
            reader.join(5)
        if code not in (0, -signal.SIGTERM):  # uvicorn re-raises the signal it handled
            raise CheckFailed(f"the server exited {code} on SIGTERM:\n{output()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_python(version: str, python: Path, wheel: Path, tmp: Path, env: dict[str, str]) -> str:
    """Both venvs on one interpreter; a summary line with the timings."""
    started = time.monotonic()
    base = tmp / f"py{version}"
    base.mkdir()
    bare = make_venv(python, base / "bare", str(wheel), env)
    probe = [str(bare), "-I", str(HERE / "probe_bare.py")]
    bare_said = run(probe, timeout=60, cwd=base, env=env).strip()
    bare_s = time.monotonic() - started

    full = make_venv(
        python, base / "full", f"stabilizer-asgi[server,client] @ {wheel.as_uri()}", env
    )
    installed_s = time.monotonic() - started
    versions = run(
        [str(full), "-I", "-c",
         "import importlib.metadata as m, stabilizer_asgi as s;"
         "print(m.version('stabilizer-asgi'), s.__version__)"],
        timeout=60, cwd=base, env=env,
    ).split()  # fmt: skip
    cli = run([str(full.parent / "stabilizer-asgi"), "--version"], timeout=60, cwd=base, env=env)
    if len(set(versions)) != 1 or cli.split() != ["stabilizer-asgi", versions[0]]:
        raise CheckFailed(f"versions disagree: metadata/__version__ {versions}, CLI {cli!r}")
    with sidecar(full.parent.parent, base, env) as (port, app_said):
        said = run([str(full), "-I", str(HERE / "probe_client.py"), str(port), TOKEN],
                   timeout=60, cwd=base, env=env)  # fmt: skip
        result = json.loads(said.strip().splitlines()[-1])
    if "app: disconnect 1000\n" not in app_said:
        raise CheckFailed(f"the app did not see the client's 1000: {app_said}")
    total = time.monotonic() - started
    return (
        f"Python {version} ({python}): OK in {total:.1f}s (bare venv + probe {bare_s:.1f}s, "
        f"both venvs {installed_s:.1f}s); {bare_said}; round trip OK, close() took "
        f"{result['close_s'] * 1000:.1f} ms, sessions after: {result['after']}"
    )


def main() -> int:
    started = time.monotonic()
    env = clean_env()
    try:
        oldest, newest = claimed_pythons()
        pythons: dict[str, Path] = {}
        for version in dict.fromkeys((oldest, newest)):
            found = find_python(version)
            if found is not None:
                pythons[version] = found
            elif in_ci():
                raise CheckFailed(f"no Python {version} found (pyenv or python{version} on PATH)")
            else:
                log(f"WARNING: no Python {version} found; SKIPPED (with CI=true this fails)")
        with tempfile.TemporaryDirectory(prefix="stabilizer-install-") as name:
            tmp = Path(name)
            wheel, version = build_wheel(tmp / "dist", env)
            log(f"built {wheel.name} in {time.monotonic() - started:.1f}s")
            for py_version, python in pythons.items():
                log(check_python(py_version, python, wheel, tmp, env))
    except CheckFailed as exc:
        log(f"FAILED: {exc}")
        return 1
    log(f"passed in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
