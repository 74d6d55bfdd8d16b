"""DPO throughput and memory: affinage's recipe against TRL 1.16's DPOTrainer, in one run.

    python benchmarks/dpo_throughput.py [--steps 3] [--warmup 1] [--repeats 1] [--json OUT]

Both tools train ``smollm2-135m-instruct`` (fp32, SDPA attention, no gradient checkpointing) with
LoRA r=16, alpha=32, no dropout, on every linear layer but the output head, with the sigmoid DPO loss
(beta 0.1), AdamW at the same constant learning rate and gradient clipping at 1.0, on the same pairs
in the same order: 4 pairs per step, each side (system prompt + question + answer, as the chat
template renders it) about 150 tokens. The reference is the policy with its adapter disabled (both
tools, no second copy of the weights). Measured, each in its own child process:

* ``affinage``: the DPO recipe, live reference;
* ``affinage cached``: the DPO recipe with ``precompute_reference=true`` (reference log-probs
  computed once before the loop, not timed in pairs/s: shown separately);
* ``TRL``: ``trl.DPOTrainer`` (``precompute_ref_log_probs=False``);
* ``affinage SFT``: LoRA SFT on the same sequences (the 8 chosen and rejected conversations of each
  step as one batch), the memory yardstick for the cached run;
* ``affinage full`` (not in the default list): full fine-tuning with a frozen reference copy of
  the weights, the variant that needs the most memory;
* ``affinage low-mem``: the live run with ``MALLOC_MMAP_THRESHOLD_=1048576`` in its environment:
  glibc then maps every block of 1 MiB or more afresh and unmaps it when freed, so activations
  freed at one step cannot fragment the heap of the next (lower peak, page faults cost CPU time).

A step's time is the wall time from the end of the previous optimizer step to the end of this one
(affinage's ``metrics.jsonl``, a TRL ``TrainerCallback.on_step_end``); pairs/s is the median over the
timed steps. Peak resident memory is each child's ``VmHWM``. Saving is left out of all of them.
Targets (issue 3): affinage >= 1.3x TRL's pairs/s and <= 0.8x its peak memory; cached peak memory
within 10% of LoRA SFT on the same lengths.

``--estimate`` adds what ``affinage estimate`` predicts for each affinage DPO run of the table (the
same config; the machine's matmul rate and bandwidth measured in this process before the runs, with the runs'
thread count) beside what was measured: seconds per step and peak memory, and their errors.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    GIB,
    load_average,
    machine_info,
    median,
    peak_rss_bytes,
    print_table,
    run_child,
    write_result,
)

MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples" / "data" / "preferences" / "helpdesk_train.jsonl"
LEARNING_RATE = 5e-5
BETA = 0.1
VARIANTS = ("affinage", "affinage-cached", "trl", "sft", "affinage-lowmem", "affinage-full")
DEFAULT_VARIANTS = VARIANTS[:-1]
LABELS = {"affinage": "affinage", "affinage-cached": "affinage cached", "trl": "TRL 1.16", "sft": "affinage SFT",
          "affinage-lowmem": "affinage low-mem", "affinage-full": "affinage full"}
LOW_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


# ----------------------------------------------------------------------------------------------
# Data: pairs of about --side-tokens tokens a side
# ----------------------------------------------------------------------------------------------


def make_pairs(tokenizer: Any, n: int, side_tokens: int, seed: int) -> tuple[list[dict], list[int]]:
    """Conversational pairs from the example helpdesk pairs: each answer is lengthened with other
    answers' sentences, then cut word by word to ``side_tokens`` (within 3) tokens once rendered."""
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()]
    words = " ".join(r["chosen"] for r in rows).split()
    rng = random.Random(seed)
    pairs, lengths = [], []

    def rendered_length(prompt: str, answer: str) -> int:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def fit(prompt: str, start: list[str]) -> str:
        answer = list(start)
        while rendered_length(prompt, " ".join(answer)) < side_tokens:
            k = rng.randrange(len(words) - 20)
            answer.extend(words[k : k + 10])
        while len(answer) > 1 and rendered_length(prompt, " ".join(answer)) > side_tokens + 3:
            answer.pop()
        return " ".join(answer)

    for _ in range(n):
        row = rng.choice(rows)
        chosen = fit(row["prompt"], row["chosen"].split())
        rejected = fit(row["prompt"], row["rejected"].split())
        pairs.append({"prompt": [{"role": "user", "content": row["prompt"]}],
                      "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]})
        lengths += [rendered_length(row["prompt"], chosen), rendered_length(row["prompt"], rejected)]
    return pairs, lengths


def step_order(num_rows: int, batch_size: int, total_steps: int, seed: int) -> list[int]:
    """Pair indices in the order affinage's recipe reads them (its BatchPlan); TRL reads this order."""
    from affinage.engine.batching import BatchPlan

    plan = BatchPlan(num_rows, batch_size, 1, 1, seed)
    return [i for step in range(total_steps) for i in plan.global_batch(step)]


# ----------------------------------------------------------------------------------------------
# Children: one measurement each
# ----------------------------------------------------------------------------------------------


def _no_saving() -> None:
    import affinage.models.adapters as adapters
    import affinage.recipes.dpo as dpo
    import affinage.recipes.sft as sft

    dpo.save_checkpoint = sft.save_checkpoint = lambda *a, **k: None
    adapters.save_final = lambda *a, **k: None


def _step_ends(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["elapsed_s"] for r in rows if r.get("split") == "train"]


def _cpu_clock(module: Any) -> list[float]:
    """Process CPU time (all threads) at the end of each optimizer step of an affinage recipe."""
    ends: list[float] = []
    real = module.MetricLogger.log

    def log(self, row):
        if row.get("split") == "train":
            ends.append(time.process_time())
        real(self, row)

    module.MetricLogger.log = log
    return ends


def affinage_config(args: argparse.Namespace, data_file: str, work: Path, variant: str) -> Any:
    """The DPO config of an affinage variant: LoRA with the adapter switched off as the reference
    (cached: reference log-probs precomputed), or full weights with a frozen reference copy."""
    import affinage.recipes.dpo as dpo
    from affinage.config import AdapterConfig, ModelConfig, RunConfig, TrainConfig
    from affinage.data.preference import PreferenceDataConfig

    adapter = (AdapterConfig(method="full") if variant == "affinage-full" else
               AdapterConfig(method="lora", r=16, alpha=32, dropout=0.0, target_modules=["all-linear"]))
    cfg = dpo.DPOConfig(
        model=ModelConfig(name=MODEL, dtype="float32", attn_implementation="sdpa", gradient_checkpointing=False),
        adapter=adapter,
        data=PreferenceDataConfig(train=[data_file], max_length=1024),
        train=TrainConfig(lr=LEARNING_RATE, scheduler="constant", max_steps=args.warmup + args.steps,
                          batch_size=args.batch_size, grad_accum=1, max_grad_norm=1.0, seed=args.seed),
        run=RunConfig(output_dir=str(work / "run"), log_every=1, progress=False),
        loss="dpo", beta=BETA, precompute_reference=variant == "affinage-cached",
        reference_cache_dir=str(work / "cache"),
    )
    cfg.validate()
    return cfg


def child_affinage(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import affinage.recipes.dpo as dpo

    _no_saving()
    precompute = {"s": 0.0}
    if args.variant == "affinage-cached":
        real = dpo.cached_reference_logps

        def timed(*a, **k):
            start = time.perf_counter()
            out = real(*a, **k)
            precompute["s"] = time.perf_counter() - start
            return out

        dpo.cached_reference_logps = timed
    cfg = affinage_config(args, args.data_file, work, args.variant)  # low-mem: the live run, env only
    cpu = _cpu_clock(dpo)
    cpu_start = time.process_time()
    dpo.train(cfg)
    return {"step_ends": _step_ends(work / "run"), "cpu_ends": [c - cpu_start for c in cpu],
            "peak_rss": peak_rss_bytes(), "precompute_s": precompute["s"]}


def child_sft(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """LoRA SFT on the same sequences: step k trains the 2B chosen and rejected conversations of DPO step k."""
    import affinage.recipes.sft as sft
    from affinage.config import AdapterConfig, DataConfig, ModelConfig, RunConfig, SFTConfig, TrainConfig
    from affinage.data.io import write_jsonl

    _no_saving()
    pairs = [json.loads(line) for line in Path(args.data_file).read_text().splitlines()]
    order = step_order(len(pairs), args.batch_size, args.warmup + args.steps, args.seed)
    conversations = []
    for step in range(args.warmup + args.steps):
        batch = [pairs[i] for i in order[step * args.batch_size : (step + 1) * args.batch_size]]
        conversations += [{"messages": p["prompt"] + p[side]} for side in ("chosen", "rejected") for p in batch]
    data = work / "sft.jsonl"
    write_jsonl(data, conversations)
    cfg = SFTConfig(
        model=ModelConfig(name=MODEL, dtype="float32", attn_implementation="sdpa", gradient_checkpointing=False),
        adapter=AdapterConfig(method="lora", r=16, alpha=32, dropout=0.0, target_modules=["all-linear"]),
        data=DataConfig(train=[str(data)], max_length=1024, packing="off"),
        train=TrainConfig(lr=LEARNING_RATE, scheduler="constant", max_steps=args.warmup + args.steps,
                          batch_size=2 * args.batch_size, grad_accum=1, max_grad_norm=1.0, seed=args.seed),
        run=RunConfig(output_dir=str(work / "run"), log_every=1, progress=False),
    )
    cfg.validate()
    cpu = _cpu_clock(sft)
    cpu_start = time.process_time()
    sft.train(cfg)
    return {"step_ends": _step_ends(work / "run"), "cpu_ends": [c - cpu_start for c in cpu],
            "peak_rss": peak_rss_bytes(), "precompute_s": 0.0}


def child_trl(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from affinage.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=torch.float32, attn_implementation="sdpa")
    pairs = [json.loads(line) for line in Path(args.data_file).read_text().splitlines()]
    total = args.warmup + args.steps
    dataset = Dataset.from_list([pairs[i] for i in step_order(len(pairs), args.batch_size, total, args.seed)])

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.cpu_start = 0.0
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter() - self.start)
            self.cpu_ends.append(time.process_time() - self.cpu_start)

    timer = StepTimer()
    config = DPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_length=1024, bf16=False, fp16=False, gradient_checkpointing=False, report_to=[], logging_steps=1,
        dataloader_num_workers=0, save_strategy="no", eval_strategy="no", max_steps=total,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, seed=args.seed, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=False,
        train_sampling_strategy="sequential", disable_tqdm=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", bias="none",
                             task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[timer])
    trainer.train()
    return {"step_ends": timer.ends, "cpu_ends": timer.cpu_ends, "peak_rss": peak_rss_bytes(), "precompute_s": 0.0}


def child_main(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="affinage-bench-") as tmp:
        work = Path(tmp)
        if args.variant == "trl":
            result = child_trl(args, work)
        elif args.variant == "sft":
            result = child_sft(args, work)
        else:
            result = child_affinage(args, work)
    write_result(args.result, {**result, "variant": args.variant})


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per measurement (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="repeat the measurements, alternating the order")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from: {', '.join(VARIANTS)} (default: all but affinage-full)")
    p.add_argument("--estimate", action="store_true",
                   help="also print affinage estimate's time per step and peak memory beside the measured ones")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step (default 4)")
    p.add_argument("--side-tokens", type=int, default=150, help="tokens per side, prompt included (default 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in each run (default: torch's choice); 1 makes CPU time a clean "
                        "measure of work on a machine shared with other jobs")
    p.add_argument("--json", default=None, metavar="OUT", help="also write every measurement to this JSON file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--data-file", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v not in VARIANTS for v in args.variants) or not args.variants:
        p.error(f"--variants takes some of: {', '.join(VARIANTS)}")
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        p.error("--steps, --warmup and --repeats must be at least 1")
    return args


def estimate_runs(args: argparse.Namespace, data_file: Path) -> dict[str, Any]:
    """``affinage estimate`` of each affinage DPO variant asked for, on the benchmark's own data file."""
    import torch

    from affinage.planning.estimate import EstimateOptions, detect_hardware, estimate_config

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [v for v in ("affinage", "affinage-cached", "affinage-full") if v in args.variants]
    if not runs:
        return {}
    hardware = detect_hardware(torch.float32, EstimateOptions())
    out: dict[str, Any] = {"hardware": {"matmul_flops": hardware.matmul_flops, "bandwidth": hardware.bandwidth,
                                        "threads": hardware.threads, "load_average": hardware.load_average}}
    for variant in runs:
        cfg = affinage_config(args, str(data_file), data_file.parent / "estimate", variant)
        est = next(m for m in estimate_config(cfg, hardware=hardware).methods if m.configured)
        out[variant] = {"label": est.label, "reference": est.reference, "step_s": est.time_s["per_step"],
                        "peak_gib": est.peak_memory_bytes / GIB}
    return out


def print_estimates(estimates: dict[str, Any], summary: dict[str, dict[str, float]]) -> None:
    """The estimates beside the measured time per step and peak memory."""
    rows = []
    for variant, est in estimates.items():
        if variant == "hardware":
            continue
        measured = summary[variant]
        rows.append([LABELS[variant], est["label"], f"{est['step_s']:.1f}", f"{measured['step_s']:.1f}",
                     f"{est['step_s'] / measured['step_s'] - 1:+.0%}", f"{est['peak_gib']:.2f}",
                     f"{measured['peak_rss_gib']:.2f}", f"{est['peak_gib'] / measured['peak_rss_gib'] - 1:+.0%}"])
    hw = estimates["hardware"]
    print_table("affinage estimate against these runs", ["run", "estimated as", "s/step est.", "measured", "error",
                                                         "peak GiB est.", "measured", "error"], rows,
                caption=(f"estimate from a {hw['matmul_flops'] / 1e9:.0f} GFLOP/s fp32 matmul rate and "
                         f"{hw['bandwidth'] / 1e9:.1f} GB/s copy bandwidth measured before the runs "
                         f"({hw['threads']} threads, load average {hw['load_average']}); target: within 25%."))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    import os

    from rich.console import Console

    from affinage.data.io import write_jsonl

    os.environ.setdefault("COLUMNS", "170")  # the table is wide; rich reads this when not on a terminal
    from affinage.models import load_tokenizer

    console = Console()
    started = time.perf_counter()
    tokenizer = load_tokenizer(MODEL)
    total = args.warmup + args.steps
    pairs, lengths = make_pairs(tokenizer, max(total * args.batch_size, 16), args.side_tokens, args.seed)
    info = machine_info()
    load_before = load_average()
    console.print(f"[bold]machine[/] {info['cpu']}, {info['logical_cores']} logical cores, torch {info['torch']} "
                  f"({info['torch_threads']} threads), load average {load_before}")
    console.print(f"[bold]data[/] {len(pairs)} pairs, {min(lengths)}-{max(lengths)} tokens a side "
                  f"(mean {sum(lengths) / len(lengths):.0f}); {args.batch_size} pairs per step, "
                  f"{args.warmup} warm-up + {args.steps} timed steps, LoRA r=16, fp32")
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="affinage-bench-") as tmp:
        data_file = Path(tmp) / "pairs.jsonl"
        write_jsonl(data_file, pairs)
        estimates = estimate_runs(args, data_file) if args.estimate else {}
        for rep in range(args.repeats):
            for variant in args.variants if rep % 2 == 0 else args.variants[::-1]:
                t = time.perf_counter()
                console.print(f"  repeat {rep + 1}: {LABELS[variant]:16s} ...", end="")
                result = run_child([__file__, "--child", "--variant", variant, "--data-file", str(data_file),
                                    "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
                                    "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
                                   env={**({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}),
                                        **(LOW_MEMORY_ENV if variant == "affinage-lowmem" else {})})
                ends = result["step_ends"]
                if len(ends) != total:
                    raise RuntimeError(f"{variant}: {len(ends)} steps recorded, expected {total}")
                times = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)][args.warmup :]
                cpu = result["cpu_ends"]
                result["step_s"] = times
                result["step_cpu_s"] = [b - a for a, b in zip([0.0, *cpu[:-1]], cpu, strict=True)][args.warmup :]
                results.setdefault(variant, []).append(result)
                console.print(f" {median(times):6.1f} s/step ({median(result['step_cpu_s']):.1f} CPU-s), "
                              f"peak RSS {result['peak_rss'] / GIB:.2f} GiB "
                              f"({time.perf_counter() - t:.0f} s)")
    load_after = load_average()

    summary: dict[str, dict[str, float]] = {}
    for variant, runs in results.items():
        step_s = median([s for run in runs for s in run["step_s"]])
        cpu_s = median([s for run in runs for s in run["step_cpu_s"]])
        summary[variant] = {"step_s": step_s, "pairs_per_s": args.batch_size / step_s, "step_cpu_s": cpu_s,
                            "pairs_per_cpu_s": args.batch_size / cpu_s,
                            "peak_rss_gib": median([run["peak_rss"] for run in runs]) / GIB,
                            "precompute_s": median([run["precompute_s"] for run in runs])}
    rows = []
    trl = summary.get("trl")
    for variant in args.variants:
        s = summary[variant]
        comparable = trl and variant not in ("sft", "affinage-full")  # both LoRA DPO
        speed = f"{s['pairs_per_s'] / trl['pairs_per_s']:.2f}x" if comparable else ""
        cpu_speed = f"{s['pairs_per_cpu_s'] / trl['pairs_per_cpu_s']:.2f}x" if comparable else ""
        memory = f"{s['peak_rss_gib'] / trl['peak_rss_gib']:.2f}x" if comparable else ""
        extra = f"reference: {s['precompute_s']:.0f} s once" if variant == "affinage-cached" else ""
        if variant == "affinage-cached" and "sft" in summary:
            extra += f"; memory {s['peak_rss_gib'] / summary['sft']['peak_rss_gib']:.2f}x LoRA SFT"
        if variant == "affinage-lowmem":
            extra = "MALLOC_MMAP_THRESHOLD_=1048576"
        if variant == "affinage-full":
            extra = "full weights, frozen reference copy"
        rows.append([LABELS[variant], f"{s['pairs_per_s']:.3f}", f"{s['step_s']:.1f}", f"{s['step_cpu_s']:.1f}",
                     f"{s['peak_rss_gib']:.2f}", speed, cpu_speed, memory, extra])
    print_table(
        f"DPO throughput: {MODEL}, LoRA r=16, fp32, {args.batch_size} pairs x ~{args.side_tokens} tokens a side",
        ["run", "pairs/s", "s/step", "CPU-s/step", "peak RSS GiB", "pairs/s vs TRL", "per CPU-s vs TRL",
         "memory vs TRL", "notes"],
        rows,
        caption=(f"median over {args.steps} timed steps x {args.repeats} repeat(s), torch threads "
                 f"{args.threads or 'default'}; CPU-s: process CPU time of a step; targets: >= 1.3x TRL pairs/s, "
                 f"<= 0.8x its memory; cached within 1.1x of LoRA SFT memory. Load average {load_before} before, "
                 f"{load_after} after (other work on the machine slows every run)."),
    )
    if estimates:
        print_estimates(estimates, summary)
    if args.json:
        write_result(args.json, {"model": MODEL, "machine": info, "load_average": [load_before, load_after],
                                 "estimates": estimates,
                                 "settings": {k: getattr(args, k) for k in ("steps", "warmup", "repeats", "batch_size",
                                                                            "side_tokens", "seed")},
                                 "summary": summary, "measurements": results, "wall_s": time.perf_counter() - started})
        console.print(f"wrote {args.json}")
    console.print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
