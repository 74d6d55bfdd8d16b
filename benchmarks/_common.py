"""Helpers shared by the benchmark scripts: machine peaks, peak memory, child processes, tables.

Benchmarks measure each configuration in its own child process (``run_child``) so that peak
resident memory belongs to one measurement only, and compare against what this machine can do:
its measured fp32 matrix-product rate (``matmul_peak_flops``) and memory-copy bandwidth
(``memory_bandwidth``), not a datasheet figure.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GIB = 1024**3


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """Peak resident memory of this process image, in bytes.

    Reads ``VmHWM`` from ``/proc/self/status`` on Linux. ``getrusage(...).ru_maxrss`` is the
    fallback elsewhere; on Linux it is avoided because a child started with fork (or vfork) then
    exec keeps the parent's high-water mark in it, which would charge the parent's memory to the
    child.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


# ----------------------------------------------------------------------------------------------
# Machine peaks
# ----------------------------------------------------------------------------------------------


def matmul_peak_flops(n: int = 4096, repeats: int = 7, dtype: str = "float32") -> float:
    """Measured rate of one large square ``torch.mm`` in FLOP/s (``2 n^3`` FLOPs), median of repeats.

    Uses torch's default thread count, which is what training uses. One untimed call first warms
    the allocator and the BLAS library.
    """
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    out = torch.empty(n, n, dtype=a.dtype)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / median(times)


def memory_bandwidth(nbytes: int = 512 * 1024**2, repeats: int = 7) -> float:
    """Measured copy bandwidth in bytes/s: ``dst.copy_(src)`` of ``nbytes``, counting read + write."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / median(times)


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch threads and library versions, for the record."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    mem_total = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(mem_total / GIB, 1) if mem_total else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def load_average() -> float | None:
    """One-minute load average: other work on the machine makes timings noisy; recorded with them."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------
# Child processes
# ----------------------------------------------------------------------------------------------


def run_child(argv: list[str], *, timeout: float | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python argv... --result PATH`` in a fresh interpreter and return the JSON it wrote to PATH.

    The child's output (stdout and stderr: logs, warnings) is captured and shown only if it fails.
    Raises RuntimeError naming the command when the child fails or writes no result.
    """
    with tempfile.TemporaryDirectory(prefix="affinage-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, *argv, "--result", str(result)]
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        if proc.returncode != 0 or not result.exists():
            tail = "\n".join(proc.stdout.splitlines()[-40:])
            raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
        return json.loads(result.read_text(encoding="utf-8"))


def run_lockstep(
    children: dict[str, list[str]], steps: int, *, timeout: float | None = None
) -> dict[str, dict[str, Any]]:
    """Run several child scripts that take turns, one step at a time; return each one's JSON result.

    On a machine shared with other work, measurements taken minutes apart see different loads. Here
    the children run side by side but never at the same time: each waits for its turn, runs one
    step, hands the CPU back, and the parent gives the next turn to the next child, reversing the
    order every round (A B, B A, A B ...). Adjacent steps of different children then see the same
    background load, and peak memory stays per process.

    Each child gets ``--turn-fds GO,DONE --result PATH`` and uses :class:`Turns` with them: it
    writes one byte when ready and after each step, and reads one byte before each step. ``steps``
    is the number of turns each child takes.
    """
    names = list(children)
    with tempfile.TemporaryDirectory(prefix="affinage-bench-") as tmp:
        procs: dict[str, tuple[subprocess.Popen, int, int, Path, Any]] = {}
        try:
            for name in names:
                go_read, go_write = os.pipe()
                done_read, done_write = os.pipe()
                log_path = Path(tmp) / f"{name}.log"
                log = log_path.open("w")
                cmd = [sys.executable, *children[name], "--turn-fds", f"{go_read},{done_write}",
                       "--result", str(Path(tmp) / f"{name}.json")]
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, pass_fds=(go_read, done_write))
                os.close(go_read)
                os.close(done_write)
                procs[name] = (proc, go_write, done_read, log_path, log)

            def wait_for(name: str) -> None:
                proc, _, done_read, log_path, _ = procs[name]
                if not os.read(done_read, 1):  # EOF: the child exited before finishing its turn
                    proc.wait()
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
                    raise RuntimeError(f"benchmark child '{name}' failed (exit {proc.returncode}):\n{tail}")

            for name in names:  # every child has loaded what it needs
                wait_for(name)
            for step in range(steps):
                for name in names if step % 2 == 0 else names[::-1]:
                    os.write(procs[name][1], b"g")
                    wait_for(name)
            results = {}
            for name, (proc, _, _, log_path, _) in procs.items():
                if proc.wait(timeout=timeout) != 0 or not (Path(tmp) / f"{name}.json").exists():
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
                    raise RuntimeError(f"benchmark child '{name}' failed (exit {proc.returncode}):\n{tail}")
                results[name] = json.loads((Path(tmp) / f"{name}.json").read_text(encoding="utf-8"))
            return results
        finally:
            for proc, go_write, done_read, _, log in procs.values():
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
                for fd in (go_write, done_read):
                    os.close(fd)
                log.close()


class Turns:
    """Child side of :func:`run_lockstep`, and the step clock: wall and CPU seconds of each step.

    ``begin()`` before a step (waits for the turn), ``end(more)`` after it (hands the turn back
    and, when ``more``, waits for the next one). Without file descriptors (a child run on its own)
    it only times. ``steps`` holds ``(wall_s, cpu_s)`` per step; CPU time is the process's, all
    threads, and excludes the wait.
    """

    def __init__(self, fds: str | None = None) -> None:
        self.go, self.done = (int(fd) for fd in fds.split(",")) if fds else (None, None)
        self.steps: list[tuple[float, float]] = []
        self._start: tuple[float, float] | None = None
        self._ready = False

    def begin(self) -> None:
        if self.done is not None:
            if not self._ready:
                os.write(self.done, b"r")
                self._ready = True
            if not os.read(self.go, 1):
                raise SystemExit("benchmark parent went away")
        self._start = (time.perf_counter(), time.process_time())

    def end(self, more: bool) -> None:
        assert self._start is not None, "Turns.end() without begin()"
        self.steps.append((time.perf_counter() - self._start[0], time.process_time() - self._start[1]))
        self._start = None
        if self.done is not None:
            os.write(self.done, b"d")
        if more:
            self.begin()

    @property
    def started(self) -> bool:
        return self._start is not None


def write_result(path: str | Path, data: dict[str, Any]) -> None:
    """Write a child's (or the run's) JSON result atomically."""
    from affinage.utils.fs import atomic_write_text

    atomic_write_text(Path(path), json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None) -> None:
    """A rich table; numbers right-aligned, everything else left-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    numeric = [all(isinstance(r[i], int | float) or _looks_numeric(r[i]) for r in rows) for i in range(len(columns))]
    for name, is_num in zip(columns, numeric, strict=True):
        table.add_column(name, justify="right" if is_num else "left")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console().print(table)


def _looks_numeric(cell: Any) -> bool:
    """Numbers, percentages, ratios (``1.3x``) and empty cells, once rich markup is removed."""
    from rich.text import Text

    text = Text.from_markup(str(cell)).plain.rstrip("x%").replace(",", "").strip()
    if not text:
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
