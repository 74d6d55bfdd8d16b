"""Metric logging: ``metrics.jsonl`` always, TensorBoard and MLflow when asked (main process only)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from affinage.errors import ConfigError

_OBSERVERS: list[Callable[[dict[str, Any]], None]] = []


@contextlib.contextmanager
def observe_metrics(callback: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Call ``callback(row)`` after each row any :class:`MetricLogger` of this process writes.

    The sweep uses it to report intermediate values to a pruner; an exception raised by the
    callback propagates out of the recipe's loop (that is how a pruned trial stops).
    """
    _OBSERVERS.append(callback)
    try:
        yield
    finally:
        _OBSERVERS.remove(callback)


class MetricLogger:
    """Appends one JSON object per call to ``metrics.jsonl`` and forwards scalars to trackers."""

    def __init__(self, output_dir: str | Path, report_to: list[str], *, enabled: bool = True,
                 run_name: str | None = None, config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        self._mlflow = None
        if not enabled:
            return
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "run.report_to includes 'tensorboard' but tensorboard is not installed: "
                    "pip install 'affinage[tracking]'"
                ) from None
            self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))
        if "mlflow" in report_to:
            try:
                import mlflow
            except ImportError:
                raise ConfigError(
                    "run.report_to includes 'mlflow' but mlflow is not installed: pip install 'affinage[tracking]'"
                ) from None
            self._mlflow = mlflow
            mlflow.start_run(run_name=run_name)
            if config:
                mlflow.log_params(_flatten(config))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in row.items()}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")
        step = int(row.get("step", 0))
        prefix = row.get("split", "train")
        scalars = {k: v for k, v in clean.items() if isinstance(v, int | float) and k not in ("step",)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"{prefix}/{key}", value, step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics({f"{prefix}/{k}": v for k, v in scalars.items() if math.isfinite(v)}, step=step)
        for observer in list(_OBSERVERS):
            observer(clean)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:250]
    return flat


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` back (used by reports and tests)."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows
