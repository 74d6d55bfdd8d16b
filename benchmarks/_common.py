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
