"""Planning verbs: ``sweep`` (hyper-parameter search, each trial a run) and ``estimate`` (cost before training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affinage.cli import OverridesArg, app


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep file (stage: sweep; see `affinage defaults sweep`).")],
    overrides: OverridesArg = None,
) -> None:
    """Hyper-parameter search over any config keys: grid, random or Optuna (with pruning); each trial a run."""
    from affinage.config import load_config
    from affinage.planning.sweep import SweepConfig, run_sweep

    cfg = load_config(SweepConfig, config, overrides or [])
    run_sweep(cfg, config)


@app.command()
def estimate(
    config: Annotated[Path, typer.Argument(help="A training config (sft, dpo, rm, grpo, ppo).")],
    overrides: OverridesArg = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the estimate as JSON here.")] = None,
    power_w: Annotated[float | None, typer.Option(help="Power draw per device in W (default: by hardware, see docs).")] = None,
    grid_intensity: Annotated[float, typer.Option(help="Grid carbon intensity in gCO2/kWh.")] = 475.0,
    pue: Annotated[float, typer.Option(help="Data-centre power usage effectiveness (1: the device alone).")] = 1.0,
    processes: Annotated[int, typer.Option(help="Data-parallel processes (one device each).")] = 1,
    efficiency: Annotated[float | None, typer.Option(help="Achieved share of the measured matmul rate (default: calibrated).")] = None,
    matmul_flops: Annotated[float | None, typer.Option(help="Skip the measurement: the device's matmul rate in FLOP/s.")] = None,
    bandwidth: Annotated[float | None, typer.Option(help="Skip the measurement: memory bandwidth in bytes/s.")] = None,
    sample_rows: Annotated[int, typer.Option(help="Tokenise at most this many rows; larger data is estimated from a sample.")] = 20000,
) -> None:
    """Before training: FLOPs, tokens, time, peak memory, energy and CO2, for full, LoRA, prompt tuning (and DPO references)."""
    from affinage.config import config_class_for, load_config
    from affinage.planning.estimate import EstimateOptions, estimate_config, print_estimate, write_json

    cfg = load_config(config_class_for(config), config, overrides or [])
    options = EstimateOptions(
        power_w=power_w, grid_intensity=grid_intensity, pue=pue, processes=processes, efficiency=efficiency,
        matmul_flops=matmul_flops, bandwidth=bandwidth, sample_rows=sample_rows,
    )
    report = estimate_config(cfg, options)
    report.config = str(config)
    print_estimate(report)
    if json_out is not None:
        write_json(report, json_out)
