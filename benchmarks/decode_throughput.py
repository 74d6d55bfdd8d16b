"""Decode throughput: affinage's KV-cache loop against plain ``model.generate`` and the machine's bound.

    python benchmarks/decode_throughput.py [--new-tokens 64] [--repeats 3] [--batch-sizes 1,16]
                                           [--dtypes float32,bfloat16] [--clocks wall,cpu]
                                           [--threads N] [--json OUT]

Both decode ``smollm2-135m-instruct`` (loaded by ``affinage.models.load_model``, SDPA attention)
greedily from the same prompt repeated ``batch`` times, with no stop token, so every row makes
exactly ``--new-tokens`` tokens. Decode tokens/s leaves the prefill (and our per-call set-up) out:
each tool runs once with 1 new token and once with N, and the rate is
``batch * (N - 1) / (t_N - t_1)``; the table shows the median over ``--repeats`` runs (after an
untimed warm-up run of each). ``AFFINAGE_FAST_DECODE=0`` measures our loop without its fast path
(``affinage.generation.fast_decode``).

The bound: decoding is memory-bound at small batch, since each step reads every weight once and
makes one token per row. With W the bytes of the weights (the tied embedding matrix counted once:
the output head reads it) and B the measured copy bandwidth,

    bandwidth bound = batch * B / W   tokens/s.

B is measured by ``dst.copy_(src)`` of 512 MiB and counted as **bytes copied per second** (the
memcpy rate; "memory copy about 28 GB/s" in DESIGN.md is this figure): the ``bw bound`` column,
the one the percentages use. The ``bw bound r+w`` column counts the bytes read plus the bytes
written (STREAM's convention for its Copy kernel), twice as high: a kernel that only reads (a
matrix-vector product) can go faster than a copy, since a copy also writes what it reads.

At larger batches the matrix products become the limit: ``compute bound = R / (2 N)`` tokens/s with
R the measured matrix-product rate of the dtype (the faster of ``torch.mm`` and, on CPU, oneDNN's
inner product, on 2048 x 2048 matrices) and N the parameters; the percentages are of the smaller of
the memcpy bandwidth bound and the compute bound. The bandwidth and matmul rates are measured in
this run, interleaved with the decodes, so other load on the machine affects them alike (the
one-minute load average is printed with the results).

Two clocks. ``wall``: wall-clock time at torch's thread count (``--threads``), what a user waits.
``cpu``: the process's CPU time (``time.process_time``) with one thread, for every measurement
including the copy: on a machine shared with other jobs (load above the core count) a process is
descheduled for much of a run, which wall-clock time counts and CPU time does not, so the ``cpu``
rows compare the tools (and the bound) without the scheduler's share. Only single-thread CPU time
is meaningful: waiting OpenMP threads spin and would be counted. Neither clock removes the other
jobs' share of the memory bandwidth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, machine_info, median, print_table, write_result

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
    """``dst.copy_(src)`` of ``nbytes``: bytes copied per second of ``clock`` (the memcpy rate), median."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = clock()
        dst.copy_(src)
        times.append(clock() - start)
    return nbytes / max(median(times), 1e-9)


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
            flops = matmul_flops(dtype, clock)
            for batch in batches:
                bandwidths, ours, plain = [], [], []
                for _ in range(args.repeats):  # interleaved: load changes hit every column alike
                    bandwidths.append(copy_bandwidth(clock))
                    ours.append(decode_rate(_ours, model, prompt_ids, batch, args.new_tokens, pad, 1, clock))
                    plain.append(decode_rate(_generate, model, prompt_ids, batch, args.new_tokens, pad, 1, clock))
                memcpy = median(bandwidths)  # bytes copied per second
                bandwidth_bound = batch * memcpy / weight_bytes
                bandwidth_bound_rw = 2 * bandwidth_bound  # the copy counted read + write
                compute_bound = flops / (2 * params)
                roofline = min(bandwidth_bound, compute_bound)
                o, g = median(ours), median(plain)
                result = {
                    "dtype": dtype, "batch": batch, "clock": clock_name, "threads": torch.get_num_threads(),
                    "new_tokens": args.new_tokens, "prompt_tokens": len(prompt_ids), "weight_bytes": weight_bytes,
                    "memcpy_bytes_per_s": memcpy, "matmul_flops": flops,
                    "ours_tokens_per_s": o, "generate_tokens_per_s": g,
                    "bandwidth_bound_tokens_per_s": bandwidth_bound,
                    "bandwidth_bound_read_write_tokens_per_s": bandwidth_bound_rw,
                    "compute_bound_tokens_per_s": compute_bound,
                    "ours_fraction_of_roofline": o / roofline, "generate_fraction_of_roofline": g / roofline,
                    "load_average": load_average(),
                }
                results.append(result)
                rows.append([
                    dtype, batch, f"{clock_name}/{torch.get_num_threads()}t", f"{o:.1f}", f"{g:.1f}", f"{o / g:.2f}x",
                    f"{bandwidth_bound:.1f}", f"{bandwidth_bound_rw:.1f}", f"{compute_bound:.0f}",
                    f"{100 * o / roofline:.0f}%", f"{100 * g / roofline:.0f}%",
                    f"{100 * o / min(bandwidth_bound_rw, compute_bound):.0f}%", f"{memcpy / 1e9:.1f}",
                    result["load_average"],
                ])
                print("  ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)  # progress
        del model
    torch.set_num_threads(wall_threads)
    print_table(
        f"Decode tokens/s, {args.model}, greedy, {args.new_tokens} new tokens, median of {args.repeats}",
        ["dtype", "batch", "clock", "ours", "generate", "ours/gen", "bw bound", "bw bound r+w", "mm bound",
         "ours %", "gen %", "ours % r+w", "memcpy GB/s", "load"],
        rows,
        caption="bw bound = batch x memcpy rate (bytes copied/s) / weight bytes; bw bound r+w counts the copy's "
                "bytes read + written (2x); mm bound = matmul FLOP/s / (2 x parameters); ours % and gen % = share "
                "of min(bw bound, mm bound); ours % r+w = share of min(bw bound r+w, mm bound)",
    )
    if args.json:
        write_result(args.json, {"machine": machine_info(), "results": results})


def matmul_flops(dtype: str, clock: Any, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an ``n x n`` matrix product by ``clock``: the faster of ``torch.mm`` and, on CPU,
    the oneDNN inner product that the fast decode path uses (``2 n^3`` FLOPs, median of repeats)."""
    import torch

    from affinage.generation.fast_decode import linear_for

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    kernels = [lambda: torch.mm(a, b)]
    onednn = linear_for(b)
    if onednn is not torch.nn.functional.linear:
        kernels.append(lambda: onednn(a, b, None))  # a @ b.T: the same FLOPs
    best = 0.0
    for kernel in kernels:
        kernel()
        times = []
        for _ in range(repeats):
            start = clock()
            kernel()
            times.append(clock() - start)
        best = max(best, 2 * n**3 / max(median(times), 1e-9))
    return best


if __name__ == "__main__":
    main()
