"""Shared helpers for the benchmarks in ``bench/``: measured subprocesses, medians, paths.

Peak memory is read with ``wait4`` on the measured process, from a tiny launcher process
(``python -I -S``) rather than from the benchmark itself. Why: on Linux a child's ``ru_maxrss``
starts from the RSS of the process that spawned it (the old address space's high-water mark
is carried over at ``exec``), so measuring from a parent that has imported DuckDB or rich would
report the parent's size for small children. The launcher is ~10 MB, below anything measured.

Keep this module stdlib-only so importing it costs nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_WORK = BENCH_DIR / ".work"
MB = 1024 * 1024

# Runs CMD with stdout/stderr to files and prints its wall time, exit code and peak RSS.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
out, err, cwd = sys.argv[1:4]
cmd = sys.argv[4:]
with open(out, "wb") as o, open(err, "wb") as e:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=o, stderr=e, cwd=cwd or None)
    _, status, ru = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
scale = 1 if sys.platform == "darwin" else 1024
print(json.dumps({"seconds": seconds, "rc": p.returncode, "maxrss": ru.ru_maxrss * scale}))
"""


@dataclass(frozen=True)
class Measured:
    """One measured subprocess: wall seconds, exit code, peak RSS (bytes), its output."""

    cmd: tuple[str, ...]
    seconds: float
    returncode: int
    peak_rss: int
    stdout: str
    stderr: str

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / MB

    def check(self, what: str) -> Measured:
        """Fail loudly (exit 2) with the child's output when it did not succeed."""
        if self.returncode != 0:
            fail(
                f"{what} failed with exit code {self.returncode}\n"
                f"command: {' '.join(self.cmd)}\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
            )
        return self


def measure(cmd: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Measured:
    """Run CMD in its own launcher; wall time excludes the launcher's own start-up."""
    with tempfile.TemporaryDirectory(prefix="hrbench-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(out), str(err), str(cwd or "")]
        done = subprocess.run(
            [*launcher, *cmd], capture_output=True, text=True, env=dict(env) if env else None, check=False
        )
        if done.returncode != 0:
            fail(f"measurement launcher failed: {done.stderr.strip()}")
        report = json.loads(done.stdout)
        return Measured(
            cmd=tuple(cmd),
            seconds=float(report["seconds"]),
            returncode=int(report["rc"]),
            peak_rss=int(report["maxrss"]),
            stdout=out.read_text(errors="replace"),
            stderr=err.read_text(errors="replace"),
        )


def wall_time(cmd: Sequence[str], *, env: Mapping[str, str] | None = None) -> float:
    """Seconds for CMD to run to completion (output discarded); fails loudly on error."""
    t0 = time.perf_counter()
    done = subprocess.run(
        list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=dict(env) if env else None, check=False,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        fail(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def clean_env(*drop: str) -> dict[str, str]:
    """The current environment without variables that would change what is measured."""
    return {k: v for k, v in os.environ.items() if k not in drop}


def venv_script(name: str) -> str:
    """An executable next to the running interpreter (the venv's), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        fail(f"cannot find the {name!r} executable next to {sys.executable} or on PATH")
    return str(found)


def reset_dir(path: Path) -> Path:
    """Remove PATH (file or folder) if present; return it."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    return path


def fail(message: str) -> NoReturn:
    print(f"bench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def verdict(ok: bool) -> str:  # noqa: FBT001
    return "PASS" if ok else "MISS"


def bench_main(
    argv: list[str],
    *,
    child_modes: dict[str, Any],
    parse_args: Any,
    run: Any,
    render: Any,
) -> int:
    """The shared entry of the process-per-measurement benchmarks: a child mode runs one
    measured step; otherwise parse, run, and print the report as a table or JSON."""
    import json

    if argv and argv[0] in child_modes:
        child_modes[argv[0]](*argv[1:])
        return 0
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)
    return 0
