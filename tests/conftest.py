"""Shared fixtures: throwaway projects on real DuckDB + Delta, and the PostgreSQL URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

PG_URL = os.environ.get("HEADRACE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

BASE_TOML = """\
name = "t"
lake = "lake"
state = "sqlite:///.headrace/state.db"

[run]
workers = 2
retries = 2
backoff_seconds = 0.01
max_backoff_seconds = 0.05
lock_timeout_seconds = 60
"""


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """Create a project folder from {relative path: content}; headrace.toml defaults to BASE_TOML."""

    def make(files: dict[str, str | bytes], *, toml: str = BASE_TOML, name: str = "proj") -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        write_files(root, {"headrace.toml": toml, **files})
        return root

    return make


def open_ws(root: Path, **kw: object):
    from headrace.runner.workspace import Workspace

    return Workspace.open(root, **kw)  # type: ignore[arg-type]


def run_project(root: Path, *select: str, **kw: object):
    ws = open_ws(root)
    try:
        return ws.run(list(select), **kw)  # type: ignore[arg-type]
    finally:
        ws.close()


def read_table(root: Path, name: str, order_by: str | None = None) -> list[dict]:
    """Read a lake table's current version as rows (via DuckDB over a pyarrow dataset)."""
    import duckdb

    from headrace.delta.catalog import Lake

    snap = Lake(root / "lake").snapshot(name)
    ds = snap.dataset()  # noqa: F841  (DuckDB replacement scan)
    con = duckdb.connect()
    sql = "SELECT * FROM ds" + (f" ORDER BY {order_by}" if order_by else "")
    return con.sql(sql).to_arrow_table().to_pylist()


def table_version(root: Path, name: str) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(root / "lake" / name.replace(".", "/"))).version()


def cli(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "headrace", "--project", str(root), *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def require_pg() -> str:
    """The PG URL; skip when unreachable outside CI, fail under CI (DESIGN: real services)."""
    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable under CI")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable (set HEADRACE_TEST_PG_URL)")
    return PG_URL


class Hook:
    """A webhook receiver on 127.0.0.1: records requests, answers with scripted statuses."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook.lock:
                    hook.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(body)})
                    status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 400 else b"nope")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/T123/secret"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def bodies(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.requests if kind is None or r["body"]["kind"] == kind]


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
