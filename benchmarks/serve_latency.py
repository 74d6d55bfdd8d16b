"""Serving latency and throughput of ``affinage serve`` on loopback, through the official client.

    python benchmarks/serve_latency.py [--model smollm2-135m-instruct] [--new-tokens 32]
                                       [--concurrency 8] [--int8] [--guard off|default] [--json OUT]

Starts the server in this process (uvicorn on 127.0.0.1, an ephemeral port) and measures, for the
same chat prompt with the end-of-sequence token banned (``logit_bias``) so every answer has exactly
``--new-tokens`` tokens:

* one request alone: wall latency (median of 3 after a warm-up) and, streaming, the time to the
  first content chunk;
* ``--concurrency`` requests sent at once, with the engine's batch size 1 (one after another) and
  ``--concurrency`` (decoded together): total tokens/s and the slowest request's latency.

The one-minute load average is printed with the results: other work on the machine slows them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, machine_info, median, print_table, write_result

PROMPT = "How do I reset my password on the cluster, and how long does the new one stay valid?"


def _measure(model: Any, tokenizer: Any, args: argparse.Namespace, batch: int, guard: Any) -> dict[str, float]:
    import openai

    from affinage.serving.server import RunningServer, ServeOptions, create_app

    options = ServeOptions(guard="off", max_batch_size=batch, max_queue=4 * args.concurrency,
                           max_tokens_limit=max(args.new_tokens, 16))
    body = dict(model="bench", messages=[{"role": "user", "content": PROMPT}], max_tokens=args.new_tokens,
                temperature=0, logit_bias={str(tokenizer.eos_token_id): -100})
    with RunningServer(create_app(model, tokenizer, options, guard=guard, name="bench")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=600)
        client.chat.completions.create(**body)  # warm-up
        single = []
        for _ in range(3):
            start = time.perf_counter()
            client.chat.completions.create(**body)
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        first = None
        for chunk in client.chat.completions.create(**body, stream=True):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start

        def one(_: int) -> float:
            t = time.perf_counter()
            reply = client.chat.completions.create(**body)
            assert reply.usage.completion_tokens == args.new_tokens
            return time.perf_counter() - t

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            latencies = list(pool.map(one, range(args.concurrency)))
        total = time.perf_counter() - start
    return {
        "single_s": median(single),
        "first_token_s": first or float("nan"),
        "concurrent_tokens_per_s": args.concurrency * args.new_tokens / total,
        "concurrent_slowest_s": max(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--int8", action="store_true", help="quantise the linear layers to int8 first")
    parser.add_argument("--guard", default="off", help="off, or default (the safety guard, self-reflection)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from affinage.serving.server import ServeOptions, load_for_serving, load_guard

    model, tokenizer = load_for_serving(args.model, ServeOptions(dtype="float32", int8=args.int8))
    guard = load_guard(args.guard, model, tokenizer)
    results = {batch: _measure(model, tokenizer, args, batch, guard) for batch in (1, args.concurrency)}
    label = f"{args.model}{' int8' if args.int8 else ''}, guard {args.guard}, {args.new_tokens} new tokens"
    rows = [
        [f"batch {b}", f"{r['single_s']:.2f}", f"{r['first_token_s']:.2f}",
         f"{r['concurrent_tokens_per_s']:.1f}", f"{r['concurrent_slowest_s']:.2f}"]
        for b, r in results.items()
    ]
    print_table(
        f"serve latency: {label}",
        ["engine", "1 request (s)", "first token (s)", f"{args.concurrency} at once: tokens/s", "slowest (s)"],
        rows,
        caption=f"load average {load_average()}; {machine_info()['cpu']}",
    )
    if args.json:
        write_result(args.json, {"machine": machine_info(), "load_average": load_average(), "args": vars(args),
                                 "results": {str(k): v for k, v in results.items()}})


if __name__ == "__main__":
    main()
