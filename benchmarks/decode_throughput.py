"""Decode throughput: affinage's KV-cache loop against plain ``model.generate`` and the machine's bound.

    python benchmarks/decode_throughput.py [--new-tokens 64] [--repeats 3] [--batch-sizes 1,16]
                                           [--dtypes float32,bfloat16] [--threads N] [--json OUT]

Both decode ``smollm2-135m-instruct`` (loaded by ``affinage.models.load_model``, SDPA attention)
greedily from the same prompt repeated ``batch`` times, with no stop token, so every row makes
exactly ``--new-tokens`` tokens. Decode tokens/s leaves the prefill out: each tool runs once with 1
new token and once with N, and the rate is ``batch * (N - 1) / (t_N - t_1)``; the table shows the
median over ``--repeats`` runs (after an untimed warm-up run of each).

The bound: decoding is memory-bound at small batch, since each step reads every weight once and
makes one token per row. With W the bytes of the weights (the tied embedding matrix counted once:
the output head reads it) and B the measured copy bandwidth (``dst.copy_(src)`` of 512 MiB,
counting the bytes read and written, STREAM's convention),

    bandwidth bound = batch * B / W   tokens/s.

At larger batches the matrix products become the limit: ``compute bound = R / (2 N)`` tokens/s with
R the measured ``torch.mm`` rate of the dtype and N the parameters; the table shows the smaller of
the two as the roofline and each tool's share of it. The bandwidth and matmul rates are measured
in this run, interleaved with the decodes, so other load on the machine affects them alike (the
one-minute load average is printed with the results).

Two clocks. ``wall``: wall-clock time at torch's thread count (``--threads``), what a user waits.
``cpu``: the process's CPU time (``time.process_time``) with one thread, for every measurement
including the copy: on a machine shared with other jobs (load above the core count) a process is
descheduled for much of a run, which wall-clock time counts and CPU time does not, so the ``cpu``
rows compare the tools (and the bound) without the scheduler's share. Only single-thread CPU time
is meaningful: waiting OpenMP threads spin and would be counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, machine_info, matmul_peak_flops, median, print_table, write_result

PROMPT = "How do I reset my password on the cluster, and how long does the new one stay valid?"


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _ours(model: Any, prompt_ids: list[int], batch: int, new: int, pad: int, clock: Any = time.perf_counter) -> float:
    from affinage.generation.rollout import SamplingParams, decode_ids

    start = clock()
    decode_ids(model, [prompt_ids] * batch, SamplingParams(max_new_tokens=new), stop_token_ids=[], pad_token_id=pad,
               batch_size=batch)
    return clock() - start


def _generate(model: Any, prompt_ids: list[int], batch: int, new: int, pad: int, clock: Any = time.perf_counter) -> float:
    import torch

    ids = torch.tensor([prompt_ids] * batch)
    start = clock()
    with torch.inference_mode():
        model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
            do_sample=False, eos_token_id=None, pad_token_id=pad,
        )
    return clock() - start


def decode_rate(fn: Any, model: Any, prompt_ids: list[int], batch: int, new: int, pad: int, repeats: int,
                clock: Any = time.perf_counter) -> float:
    """Median decode tokens/s over ``repeats``: batch * (new - 1) / (t(new) - t(1))."""
    fn(model, prompt_ids, batch, 4, pad, clock)  # warm-up
    rates = []
    for _ in range(repeats):
        t1 = fn(model, prompt_ids, batch, 1, pad, clock)
        tn = fn(model, prompt_ids, batch, new, pad, clock)
        rates.append(batch * (new - 1) / max(tn - t1, 1e-9))
    return median(rates)


def copy_bandwidth(clock: Any, nbytes: int = 512 * 1024**2, repeats: int = 3) -> float:
    """``dst.copy_(src)`` of ``nbytes``, bytes read + written per second of ``clock``, median."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = clock()
        dst.copy_(src)
        times.append(clock() - start)
    return 2 * nbytes / max(median(times), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--clocks", default="wall,cpu", help="wall (torch's threads), cpu (1 thread, CPU time)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the wall-clock rows")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--json", help="Also write the results as JSON here.")
    args = parser.parse_args()

    import torch

    from affinage.models.loading import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    wall_threads = torch.get_num_threads()
    tokenizer = load_tokenizer(args.model)
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    pad = tokenizer.pad_token_id
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results: list[dict[str, Any]] = []
    rows = []
    for dtype in args.dtypes.split(","):
        model = load_model(args.model, dtype=dtype)
        params = sum(p.numel() for p in model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for clock_name in args.clocks.split(","):
            clock = CLOCKS[clock_name]
            torch.set_num_threads(1 if clock_name == "cpu" else wall_threads)
            flops = matmul_peak_flops(n=2048, repeats=5, dtype=dtype)
            if clock_name == "cpu":  # the same product, timed by CPU time
                flops = _cpu_matmul_flops(dtype)
            for batch in batches:
                bandwidths, ours, plain = [], [], []
                for _ in range(args.repeats):  # interleaved: load changes hit every column alike
                    bandwidths.append(copy_bandwidth(clock))
                    ours.append(decode_rate(_ours, model, prompt_ids, batch, args.new_tokens, pad, 1, clock))
                    plain.append(decode_rate(_generate, model, prompt_ids, batch, args.new_tokens, pad, 1, clock))
                bandwidth = median(bandwidths)
                bandwidth_bound = batch * bandwidth / weight_bytes
                compute_bound = flops / (2 * params)
                roofline = min(bandwidth_bound, compute_bound)
                o, g = median(ours), median(plain)
                result = {
                    "dtype": dtype, "batch": batch, "clock": clock_name, "threads": torch.get_num_threads(),
                    "new_tokens": args.new_tokens, "prompt_tokens": len(prompt_ids), "weight_bytes": weight_bytes,
                    "bandwidth_bytes_per_s": bandwidth, "matmul_flops": flops,
                    "ours_tokens_per_s": o, "generate_tokens_per_s": g,
                    "bandwidth_bound_tokens_per_s": bandwidth_bound, "compute_bound_tokens_per_s": compute_bound,
                    "load_average": load_average(),
                }
                results.append(result)
                rows.append([
                    dtype, batch, f"{clock_name}/{torch.get_num_threads()}t", f"{o:.1f}", f"{g:.1f}", f"{o / g:.2f}x",
                    f"{bandwidth_bound:.1f}", f"{compute_bound:.0f}", f"{100 * o / roofline:.0f}%",
                    f"{100 * g / roofline:.0f}%", f"{bandwidth / 1e9:.1f}", result["load_average"],
                ])
                print("  ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)  # progress
        del model
    torch.set_num_threads(wall_threads)
    print_table(
        f"Decode tokens/s, {args.model}, greedy, {args.new_tokens} new tokens, median of {args.repeats}",
        ["dtype", "batch", "clock", "ours", "generate", "ours/gen", "bw bound", "mm bound", "ours %",
         "gen %", "copy GB/s", "load"],
        rows,
        caption="% of the roofline = min(bw bound, mm bound); bw bound = batch x copy bandwidth (read+write) / weight "
                "bytes; mm bound = matmul FLOP/s / (2 x parameters)",
    )
    if args.json:
        write_result(args.json, {"machine": machine_info(), "results": results})


def _cpu_matmul_flops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        torch.mm(a, b)
        times.append(time.process_time() - start)
    return 2 * n**3 / max(median(times), 1e-9)


if __name__ == "__main__":
    main()
