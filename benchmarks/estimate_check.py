"""`affinage estimate` against measured SFT runs: time per step and peak resident memory.

    python benchmarks/estimate_check.py [--config examples/quickstart.yaml] [--steps 5] [--threads 1]
        [--methods lora full] [--set KEY=VALUE ...] [--json OUT]

For each method, the parent measures this machine (matmul rate in the run's dtype and copy
bandwidth, timed both by the wall clock and by this process's CPU time, with the run's thread
count), computes the estimate of the config with ``train.max_steps=STEPS``, then runs the real
recipe (:func:`affinage.recipes.sft.train`) in a child process with the same overrides (no
validation set and no samples, so the run is the training loop alone). The child records, at every
logged step, the wall clock, its own CPU time (``time.process_time``) and its peak resident memory
(``VmHWM``), through :func:`affinage.engine.metrics.observe_metrics`.

Measured time per step is the median over steps 2..N (the first step allocates everything). On a
shared machine the wall time includes waiting for a core, so the table also compares the CPU time
per step divided by the thread count with the estimate computed from the CPU-timed matmul rate,
and shows the one-minute load average. Use ``--threads 1`` there: with several threads, every
parallel operation waits at its barrier for a thread that another process holds, which makes small
operations (LoRA's rank-16 products) 10-100x slower and burns CPU time spinning. ``implied
efficiency`` is the share of the matmul rate that would make the estimate exact: step FLOPs /
(rate x (CPU step time - AdamW time)). Peak memory is the child's ``VmHWM`` after the last training
step (before saving ``final/``).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import GIB, load_average, peak_rss_bytes, print_table, run_child, write_result

QUIET = ["samples=[]", "data.validation=[]", "run.eval_every=null", "run.save_every=null", "run.progress=false"]


def overrides(method: str, steps: int, out: str, extra: list[str]) -> list[str]:
    return [f"adapter.method={method}", f"train.max_steps={steps}", f"run.output_dir={out}", *QUIET, *extra]


def child(args: argparse.Namespace) -> None:
    import torch

    from affinage.config import SFTConfig, load_config
    from affinage.engine.metrics import observe_metrics
    from affinage.recipes.sft import train

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []

    def on_row(row: dict[str, Any]) -> None:
        if row.get("split") == "train":
            rows.append({"step": row["step"], "wall": time.perf_counter(), "cpu": time.process_time(),
                         "vmhwm": peak_rss_bytes(), "elapsed_s": row["elapsed_s"]})

    with tempfile.TemporaryDirectory(prefix="affinage-estimate-check-") as tmp:
        cfg = load_config(SFTConfig, args.config, overrides(args.child, args.steps, f"{tmp}/run", args.set))
        with observe_metrics(on_row):
            train(cfg)
    write_result(args.result, {"rows": rows, "peak_after_save": peak_rss_bytes()})


def measure_rates(dtype: Any) -> dict[str, float]:
    """Matmul rate and copy bandwidth, each timed by the wall clock and by this process's CPU time."""
    import torch

    threads = torch.get_num_threads()
    a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    a @ b
    walls, cpus = [], []
    for _ in range(5):
        w, c = time.perf_counter(), time.process_time()
        a @ b
        walls.append(time.perf_counter() - w)
        cpus.append((time.process_time() - c) / threads)
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    dst.copy_(src)
    bw_walls, bw_cpus = [], []
    for _ in range(5):
        w, c = time.perf_counter(), time.process_time()
        dst.copy_(src)
        bw_walls.append(time.perf_counter() - w)
        bw_cpus.append((time.process_time() - c) / threads)
    flops, nbytes = 2 * 2048**3, 2 * src.numel() * 4
    return {"matmul_wall": flops / min(walls), "matmul_cpu": flops / min(cpus),
            "bandwidth_wall": nbytes / min(bw_walls), "bandwidth_cpu": nbytes / min(bw_cpus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["lora", "full"])
    parser.add_argument("--set", nargs="*", default=[], help="More config overrides, e.g. model.dtype=float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's). On a shared machine use 1: with 2 threads every "
                             "parallel op waits for a thread another process holds, which inflates small ops 10-100x")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None)
    parser.add_argument("--result", default=None)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from affinage.config import SFTConfig, load_config
    from affinage.models.loading import resolve_dtype
    from affinage.planning.estimate import EstimateOptions, estimate_config

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results = []
    for method in args.methods:
        cfg = load_config(SFTConfig, args.config, overrides(method, args.steps, "runs/unused", args.set))
        rates = measure_rates(resolve_dtype(cfg.model.dtype))
        load_before = load_average()
        wall_est = estimate_config(cfg, EstimateOptions(matmul_flops=rates["matmul_wall"], bandwidth=rates["bandwidth_wall"]))
        cpu_est = estimate_config(cfg, EstimateOptions(matmul_flops=rates["matmul_cpu"], bandwidth=rates["bandwidth_cpu"]))
        run = run_child([__file__, "--child", method, "--config", args.config, "--steps", str(args.steps),
                         "--threads", str(threads), "--set", *args.set])
        rows = run["rows"]
        wall_steps = [b["wall"] - a["wall"] for a, b in itertools.pairwise(rows)]
        cpu_steps = [(b["cpu"] - a["cpu"]) / threads for a, b in itertools.pairwise(rows)]
        e_wall, e_cpu = wall_est.methods[0], cpu_est.methods[0]
        step_flops = e_cpu.flops["train"] / cpu_est.steps
        optimizer_s = e_cpu.time_s["per_step"] - step_flops / (rates["matmul_cpu"] * _eff(cpu_est, method))
        cpu_step = statistics.median(cpu_steps)
        results.append({
            "method": method, "steps": args.steps, "overrides": args.set, "threads": threads, "rates": rates,
            "load_average": [load_before, load_average()],
            "estimate_wall_step_s": e_wall.time_s["per_step"], "measured_wall_step_s": statistics.median(wall_steps),
            "estimate_cpu_step_s": e_cpu.time_s["per_step"], "measured_cpu_step_s": cpu_step,
            "step_flops": step_flops, "optimizer_s": optimizer_s,
            "implied_efficiency": step_flops / (rates["matmul_cpu"] * max(1e-9, cpu_step - optimizer_s)),
            "estimate_peak_bytes": e_wall.peak_memory_bytes, "memory_components": e_wall.memory,
            "measured_peak_bytes": rows[-1]["vmhwm"], "measured_peak_after_save_bytes": run["peak_after_save"],
            "wall_steps": wall_steps, "cpu_steps": cpu_steps,
        })

    table = []
    for r in results:
        table.append([
            r["method"], f"{r['estimate_wall_step_s']:.2f}", f"{r['measured_wall_step_s']:.2f}",
            f"{r['measured_wall_step_s'] / r['estimate_wall_step_s'] - 1:+.0%}",
            f"{r['estimate_cpu_step_s']:.2f}", f"{r['measured_cpu_step_s']:.2f}",
            f"{r['measured_cpu_step_s'] / r['estimate_cpu_step_s'] - 1:+.0%}", f"{r['implied_efficiency']:.3f}",
            f"{r['estimate_peak_bytes'] / GIB:.2f}", f"{r['measured_peak_bytes'] / GIB:.2f}",
            f"{r['measured_peak_bytes'] / r['estimate_peak_bytes'] - 1:+.0%}",
            " / ".join(f"{x:.1f}" for x in r["load_average"]),
        ])
    print_table(
        f"estimate vs measured: {args.config} {' '.join(args.set)}, {args.steps} steps, {threads} threads",
        ["method", "est. s/step", "wall s/step", "diff", "est. s/step (CPU rate)", "CPU s/step", "diff",
         "implied eff.", "est. peak GiB", "VmHWM GiB", "diff", "load 1-min"],
        table,
    )
    if args.json:
        write_result(args.json, {"config": args.config, "results": results})


def _eff(report: Any, method: str) -> float:
    return report.constants["efficiency"]["full" if method == "full" else "adapter"]


if __name__ == "__main__":
    main()
