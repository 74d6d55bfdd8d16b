"""Progress bars for long work: training, conversion, generation (rich, main process only)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Logs that go to a file or a CI log get 120 columns instead of rich's default 80 for non-terminals.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class _Null:
    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass


class Bar:
    """One task of a rich progress display with free-form metric text (loss, tokens/s...)."""

    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress = progress
        self._task = task_id

    def update(self, *, completed: int | None = None, advance: int | None = None, **metrics: float | str) -> None:
        if self._progress is None:
            return
        text = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        kwargs = {"metrics": text} if metrics else {}
        if completed is not None:
            kwargs["completed"] = completed
        if advance is not None:
            kwargs["advance"] = advance
        self._progress.update(self._task, **kwargs)


def _fmt(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True, completed: int = 0) -> Iterator[Bar]:
    """``with progress_bar("train", total=steps) as bar: bar.update(advance=1, loss=0.5)``."""
    if not enabled:
        yield Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        speed_estimate_period=3600,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed, metrics="")
        yield Bar(progress, task)
