"""SFT throughput: affinage's recipe against TRL's SFTTrainer, full fine-tuning and LoRA, one run.

    python benchmarks/sft_throughput.py [--steps 6] [--warmup 2] [--repeats 1] [--json OUT]

Both tools fine-tune the same model (``smollm2-135m-instruct``, loaded by ``affinage.models.load_model``
in fp32 with SDPA attention) on the same rows, in the same order, 4 conversations per step, at most
256 tokens each, fp32, no gradient checkpointing, AdamW at the same constant learning rate, gradient
clipping at 1.0. The loss covers the completion only for both: the rows are given as conversational
``prompt``/``completion`` pairs (TRL's completion-only loss; affinage's assistant-only mask), keeping
only conversations with a single assistant answer at the end that fit in 256 tokens, so neither tool
truncates or drops anything. LoRA: r=16, alpha=32, no dropout, every linear layer but the output head.

Each of the four measurements runs in its own child process, so its peak resident memory
(``VmHWM``) is its own. A step's time is the wall time from the end of the previous optimizer step
to the end of this one (data collation, forward, backward, clipping, optimizer, the previous step's
logging), taken from affinage's ``metrics.jsonl`` and from a TRL ``TrainerCallback.on_step_end``.
tokens/s is the real (non-padding) input tokens of the step over its time; the table shows the
median over the timed steps (after the warm-up steps) of all repeats. Saving is left out of both
(TRL: ``save_strategy="no"``; affinage: the end-of-run checkpoint and ``final/`` are skipped).

Model FLOP utilisation (MFU) is useful model FLOPs per second over this machine's measured fp32
``torch.mm`` rate. Per optimizer step, with T real tokens, P positions whose next token is trained
(the only positions whose logits the loss needs), S = sum over examples of n(n+1)/2 (causal
attention pairs of an example of n tokens), N_body the weights of the decoder's linear layers,
N_head those of the output head, N_lora the LoRA weights, L layers and d_attn = heads x head_dim:

    full:  6 N_body T + 6 N_head P +              12 L d_attn S
    LoRA:  4 N_body T + 4 N_head P + 6 N_lora T + 12 L d_attn S

(2 FLOPs per weight and token forward, 2 for the input gradient, 2 for the weight gradient, which
frozen weights skip; attention scores and values 4 d_attn per attended pair forward, 12 with the
backward.) For a 135M model this is about 6N per token for full fine-tuning and 4N for LoRA.
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
    Turns,
    load_average,
    machine_info,
    matmul_peak_flops,
    median,
    memory_bandwidth,
    peak_rss_bytes,
    print_table,
    run_lockstep,
    write_result,
)

MODEL = "smollm2-135m-instruct"
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "helpdesk" / "train.jsonl"
LEARNING_RATE = {"full": 1e-5, "lora": 2e-4}
TOOLS = ("affinage", "trl")
TARGET_SPEEDUP = 1.3


# ----------------------------------------------------------------------------------------------
# Data: the same prompt/completion rows for both tools
# ----------------------------------------------------------------------------------------------


def prepare_rows(data: str | None, tokenizer: Any, max_length: int, num_synthetic: int, seed: int):
    """Conversational prompt/completion rows and their token counts; (rows, stats, source)."""
    from affinage.data.formats import to_example
    from affinage.data.io import read_rows
    from affinage.data.tokenize import tokenize_example

    if data is not None or DEFAULT_DATA.exists():
        path = Path(data) if data is not None else DEFAULT_DATA
        conversations = [to_example(row, "auto", f"{path} row {n}").messages for n, row in read_rows(path)]
        source = str(path)
    else:
        conversations = synthetic_conversations(num_synthetic, seed)
        source = f"synthetic ({num_synthetic} conversations, seed {seed})"

    rows, lengths, trained, skipped = [], [], [], {"multi-turn": 0, "too long": 0, "not chat": 0}
    for messages in conversations:
        if messages is None:
            skipped["not chat"] += 1
            continue
        assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        # One assistant answer, at the end: the prompt/completion split then trains exactly the
        # tokens affinage's assistant-only mask trains.
        if assistant_turns != [len(messages) - 1]:
            skipped["multi-turn"] += 1
            continue
        from affinage.data.formats import Example

        example = tokenize_example(tokenizer, Example(messages=messages), max_length=10**9)
        if isinstance(example, str) or len(example) > max_length:
            skipped["too long"] += 1
            continue
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
        lengths.append(len(example))
        trained.append(example.num_trainable)
    stats = {"rows": len(rows), "lengths": lengths, "trained": trained, "skipped": skipped}
    return rows, stats, source


def synthetic_conversations(n: int, seed: int) -> list[list[dict[str, str]]]:
    """Deterministic one-turn chats of 60-200 tokens, for when no data file is available."""
    rng = random.Random(seed)
    words = (
        "job queue node gpu memory quota storage module python cluster login password account project "
        "partition time limit error file directory environment install version library compile run "
        "submit cancel priority share scratch home backup transfer network key ssh token model train "
        "batch data checkpoint resume log output input script slurm container image build cache"
    ).split()
    conversations = []
    for _ in range(n):
        question = " ".join(rng.choices(words, k=rng.randint(8, 25))).capitalize() + "?"
        answer = ". ".join(
            " ".join(rng.choices(words, k=rng.randint(6, 14))).capitalize() for _ in range(rng.randint(3, 8))
        )
        conversations.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer + "."}])
    return conversations


def step_order(num_rows: int, batch_size: int, total_steps: int, seed: int) -> list[int]:
    """Row indices in the order affinage's recipe consumes them (its BatchPlan); TRL reads this order."""
    from affinage.engine.batching import BatchPlan

    plan = BatchPlan(num_rows, batch_size, 1, 1, seed)
    return [i for step in range(total_steps) for i in plan.global_batch(step)]


# ----------------------------------------------------------------------------------------------
# Children: one measurement each
# ----------------------------------------------------------------------------------------------


def batch_counts(batch: dict[str, Any]) -> dict[str, int]:
    """Real tokens, example lengths' attention pairs, trained positions and computed tokens of a batch.

    A padded batch ``[B, T]`` tells its examples apart by ``attention_mask``; a packed one ``[1, N]``
    by ``position_ids`` restarting at 0.
    """
    mask = batch.get("attention_mask")
    if mask is not None:
        lengths = [int(n) for n in mask.sum(dim=1)]
    else:
        starts = (batch["position_ids"][0] == 0).nonzero().squeeze(1).tolist()
        lengths = [b - a for a, b in zip(starts, [*starts[1:], batch["position_ids"].shape[1]], strict=True)]
    return {
        "tokens": sum(lengths),
        "trained": int((batch["labels"][..., 1:] != -100).sum()),
        "attention_pairs": sum(n * (n + 1) // 2 for n in lengths),
        "padded_tokens": int(batch["input_ids"].numel()),
    }


def child_affinage(args: argparse.Namespace, data_file: Path, work: Path) -> dict[str, Any]:
    import affinage.models.adapters as adapters
    import affinage.recipes.sft as recipe
    from affinage.config import AdapterConfig, DataConfig, ModelConfig, RunConfig, SFTConfig, TrainConfig

    total = args.warmup + args.steps
    turns = Turns(args.turn_fds)
    batches: list[dict[str, int]] = []
    losses: list[float] = []
    loss_sum = recipe.causal_lm_loss_sum

    def counted_loss_sum(model, batch, *args, **kwargs):  # the loop's only call per micro-batch
        if not turns.started:  # the first step starts here, the others when the previous one ends
            turns.begin()
        batches.append(batch_counts(batch))
        return loss_sum(model, batch, *args, **kwargs)

    recipe.causal_lm_loss_sum = counted_loss_sum

    class TimedLogger(recipe.MetricLogger):
        def log(self, row: dict[str, Any]) -> None:  # called right after each optimizer step
            if row.get("split") == "train":
                losses.append(row["loss"])
                turns.end(more=len(turns.steps) + 1 < total)
            super().log(row)

    recipe.MetricLogger = TimedLogger
    # Saving is not part of the measurement (TRL runs with save_strategy="no").
    recipe.save_checkpoint = lambda *a, **k: None
    adapters.save_final = lambda *a, **k: None

    cfg = SFTConfig(
        model=ModelConfig(name=MODEL, dtype="float32", attn_implementation="sdpa", gradient_checkpointing=False),
        adapter=AdapterConfig(method=args.method, r=16, alpha=32, dropout=0.0, target_modules=["all-linear"]),
        data=DataConfig(train=[str(data_file)], format="prompt_completion", max_length=args.max_length),
        train=TrainConfig(
            lr=LEARNING_RATE[args.method], scheduler="constant", max_steps=total,
            batch_size=args.batch_size, grad_accum=1, max_grad_norm=1.0, seed=args.seed,
        ),
        run=RunConfig(output_dir=str(work / "run"), log_every=1, progress=False),
    )
    cfg.validate()
    recipe.train(cfg)
    peak = peak_rss_bytes()
    return {"steps": turns.steps, "batches": batches, "peak_rss": peak, "losses": losses}


def child_trl(args: argparse.Namespace, data_file: Path, work: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from affinage.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=torch.float32, attn_implementation="sdpa")
    rows = [json.loads(line) for line in data_file.read_text(encoding="utf-8").splitlines()]
    total = args.warmup + args.steps
    order = step_order(len(rows), args.batch_size, total, args.seed)
    dataset = Dataset.from_list([rows[i] for i in order])

    peft_config = None
    if args.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", bias="none", task_type="CAUSAL_LM"
        )

    turns = Turns(args.turn_fds)

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            turns.begin()

        def on_step_end(self, args, state, control, **kwargs):  # right after each optimizer step
            turns.end(more=state.global_step < state.max_steps)

    timer = StepTimer()
    config = SFTConfig(
        output_dir=str(work / "trl"),
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to=[],
        logging_steps=1,
        dataloader_num_workers=0,
        save_strategy="no",
        eval_strategy="no",
        max_steps=total,
        learning_rate=LEARNING_RATE[args.method],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=args.seed,
        # The rows are already in affinage's order: both tools see the same batches.
        train_sampling_strategy="sequential",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[timer],
    )
    batches: list[dict[str, int]] = []
    collator = trainer.data_collator

    def counted_collator(*args, **kwargs):
        batch = collator(*args, **kwargs)
        batches.append(batch_counts(batch))
        return batch

    trainer.data_collator = counted_collator
    trainer.train()
    peak = peak_rss_bytes()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"steps": turns.steps, "batches": batches, "peak_rss": peak, "losses": losses}


def child_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="affinage-bench-") as tmp:
        run = child_affinage if args.tool == "affinage" else child_trl
        result = run(args, Path(args.data_file), Path(tmp))
    result.update(tool=args.tool, method=args.method)
    write_result(args.result, result)


# ----------------------------------------------------------------------------------------------
# Parent: prepare, run the children interleaved, summarise
# ----------------------------------------------------------------------------------------------


def model_facts() -> dict[str, int]:
    """Weights of the linear layers (decoder body, output head), LoRA weights, layers, attention width."""
    import torch

    from affinage.config import AdapterConfig
    from affinage.models import apply_adapter, count_parameters, load_model

    model = load_model(MODEL, dtype=torch.float32)
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    cfg = model.config
    facts = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_body": body,
        "n_head": head.weight.numel(),
        "layers": cfg.num_hidden_layers,
        "d_attn": cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
    }
    lora = apply_adapter(model, AdapterConfig(method="lora", r=16, alpha=32, target_modules=["all-linear"]))
    facts["n_lora"] = count_parameters(lora)[0]
    return facts


def step_flops(method: str, batch: dict[str, int], facts: dict[str, int]) -> float:
    """Useful model FLOPs of one optimizer step (see the module docstring)."""
    k = 6 if method == "full" else 4
    flops = k * facts["n_body"] * batch["tokens"] + k * facts["n_head"] * batch["trained"]
    flops += 12 * facts["layers"] * facts["d_attn"] * batch["attention_pairs"]
    if method == "lora":
        flops += 6 * facts["n_lora"] * batch["tokens"]
    return float(flops)


def summarise(result: dict[str, Any], warmup: int, facts: dict[str, int]) -> dict[str, Any]:
    times = [wall for wall, _ in result["steps"]]
    cpu = [cpu for _, cpu in result["steps"]]
    batches = result["batches"][: len(times)]
    timed = range(warmup, len(times))
    rates = [batches[i]["tokens"] / times[i] for i in timed]
    flops = [step_flops(result["method"], batches[i], facts) / times[i] for i in timed]
    return {
        "tokens_per_s": rates,
        "tokens_per_cpu_s": [batches[i]["tokens"] / cpu[i] for i in timed],
        "step_s": [times[i] for i in timed],
        "step_cpu_s": [cpu[i] for i in timed],
        "model_flops_per_s": flops,
        "tokens_per_step": [batches[i]["tokens"] for i in timed],
        "trained_per_step": [batches[i]["trained"] for i in timed],
        "padded_per_step": [batches[i]["padded_tokens"] for i in timed],
        "peak_rss_gib": result["peak_rss"] / GIB,
        "losses": result["losses"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help=f"chat data file (default: {DEFAULT_DATA} if present, else synthetic)")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per measurement (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="repeat the 4 measurements, alternating the order (default 1)")
    p.add_argument("--methods", default="full,lora", help="comma-separated: full, lora (default both)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--synthetic", type=int, default=256, help="conversations to generate when there is no data file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="OUT", help="also write every measurement to this JSON file")
    # Internal: run one measurement in this process.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tool", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--method", choices=("full", "lora"), help=argparse.SUPPRESS)
    p.add_argument("--data-file", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--turn-fds", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        p.error("--steps, --warmup and --repeats must be at least 1")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods or any(m not in LEARNING_RATE for m in args.methods):
        p.error("--methods takes full, lora or full,lora")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return

    from rich.console import Console

    from affinage.data.io import write_jsonl
    from affinage.models import load_tokenizer

    console = Console()
    started = time.perf_counter()
    tokenizer = load_tokenizer(MODEL)
    rows, stats, source = prepare_rows(args.data, tokenizer, args.max_length, args.synthetic, args.seed)
    total_steps = args.warmup + args.steps
    if len(rows) < args.batch_size:
        sys.exit(f"only {len(rows)} usable conversations in {source}; need at least --batch-size={args.batch_size}")
    order = step_order(len(rows), args.batch_size, total_steps, args.seed)
    expected_tokens = [
        sum(stats["lengths"][i] for i in order[s * args.batch_size : (s + 1) * args.batch_size]) for s in range(total_steps)
    ]
    info = machine_info()
    load_before = load_average()
    console.print(f"[bold]machine[/] {info['cpu']}, {info['logical_cores']} logical cores, torch {info['torch']} ({info['torch_threads']} threads)")
    console.print("measuring the fp32 matrix-product peak and memory bandwidth ...")
    peak_flops = matmul_peak_flops()
    bandwidth = memory_bandwidth()
    facts = model_facts()
    console.print(
        f"fp32 torch.mm 4096^3: {peak_flops / 1e9:.1f} GFLOP/s   copy bandwidth: {bandwidth / 1e9:.1f} GB/s   "
        f"load average: {load_before}"
    )
    console.print(
        f"[bold]data[/] {source}: {stats['rows']} one-answer conversations of at most {args.max_length} tokens "
        f"(mean {sum(stats['lengths']) / len(rows):.0f}; skipped {stats['skipped']}); loss on completions only "
        f"(mean {sum(stats['trained']) / len(rows):.0f} trained tokens per conversation)"
    )
    console.print(
        f"[bold]work[/] {args.warmup} warm-up + {args.steps} timed steps of {args.batch_size} conversations, "
        f"fp32, no gradient checkpointing, {args.repeats} repeat(s), methods {', '.join(args.methods)}"
    )

    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    raw = []
    with tempfile.TemporaryDirectory(prefix="affinage-bench-") as tmp:
        data_file = Path(tmp) / "prompt_completion.jsonl"
        write_jsonl(data_file, rows)
        for rep in range(args.repeats):
            for method in args.methods:
                tools = TOOLS if rep % 2 == 0 else TOOLS[::-1]
                t = time.perf_counter()
                console.print(f"  repeat {rep + 1}: {method}, {' and '.join(tools)} taking turns step by step ...")
                child_args = [
                    "--child", "--method", method, "--data-file", str(data_file), "--steps", str(args.steps),
                    "--warmup", str(args.warmup), "--seed", str(args.seed), "--batch-size", str(args.batch_size),
                    "--max-length", str(args.max_length),
                ]
                pair = run_lockstep({tool: [__file__, *child_args, "--tool", tool] for tool in tools}, total_steps)
                for tool in TOOLS:
                    result = pair[tool]
                    measured = [b["tokens"] for b in result["batches"][:total_steps]]
                    if measured != expected_tokens or len(result["steps"]) != total_steps:
                        raise RuntimeError(
                            f"{tool} {method}: batches differ from the plan (tokens per step {measured} "
                            f"!= {expected_tokens}); the comparison would not be like for like"
                        )
                    summary = summarise(result, args.warmup, facts)
                    results.setdefault((method, tool), []).append(summary)
                    raw.append({"repeat": rep, "method": method, "tool": tool, **summary})
                    console.print(
                        f"    {tool:8s} {median(summary['tokens_per_s']):7.1f} tok/s, "
                        f"{median(summary['tokens_per_cpu_s']):6.1f} tok/CPU-s, "
                        f"peak RSS {summary['peak_rss_gib']:.2f} GiB"
                    )
                console.print(f"    ({time.perf_counter() - t:.0f} s)")
    # The machine's peak is the better of two measurements (before and after), so that a busy
    # moment cannot lower the peak and flatter the utilisation.
    peak_flops_end = matmul_peak_flops()
    peak = max(peak_flops, peak_flops_end)
    load_after = load_average()

    table_rows, summary_json = [], {}
    for method in args.methods:
        agg = {}
        for tool in TOOLS:
            runs = results[(method, tool)]
            agg[tool] = {
                "tokens_per_s": median([r for run in runs for r in run["tokens_per_s"]]),
                "tokens_per_cpu_s": median([r for run in runs for r in run["tokens_per_cpu_s"]]),
                "step_s": median([r for run in runs for r in run["step_s"]]),
                "peak_rss_gib": median([run["peak_rss_gib"] for run in runs]),
                "mfu": median([f for run in runs for f in run["model_flops_per_s"]]) / peak,
                "trained_per_step": median([t for run in runs for t in run["trained_per_step"]]),
                "computed_per_step": median([t for run in runs for t in run["padded_per_step"]]),
            }
        speed = agg["affinage"]["tokens_per_s"] / agg["trl"]["tokens_per_s"]
        cpu_speed = agg["affinage"]["tokens_per_cpu_s"] / agg["trl"]["tokens_per_cpu_s"]
        memory = agg["affinage"]["peak_rss_gib"] / agg["trl"]["peak_rss_gib"]
        ok = speed >= TARGET_SPEEDUP and memory <= 1.0
        summary_json[method] = {
            **agg, "speedup": speed, "cpu_speedup": cpu_speed, "memory_ratio": memory, "meets_target": ok
        }
        label = "full" if method == "full" else "LoRA r=16"
        for tool, name in (("affinage", "affinage"), ("trl", "TRL 1.16")):
            a = agg[tool]
            table_rows.append(
                [label, name, f"{a['tokens_per_s']:.1f}", f"{a['tokens_per_cpu_s']:.1f}", f"{a['peak_rss_gib']:.2f}",
                 f"{100 * a['mfu']:.1f}%", f"{a['computed_per_step']:.0f}", f"{a['trained_per_step']:.0f}", ""]
            )
        verdict = "[green]met[/]" if ok else "[red]NOT met[/]"
        table_rows.append(
            [label, "[bold]ours/TRL[/]", f"[bold]{speed:.2f}x[/]", f"{cpu_speed:.2f}x", f"[bold]{memory:.2f}x[/]",
             "", "", "", verdict]
        )
    print_table(
        f"SFT throughput: {MODEL}, fp32, {args.batch_size} x <= {args.max_length} tokens, completion-only loss",
        ["method", "tool", "tok/s", "tok/CPU-s", "RSS GiB", "MFU", "computed", "trained", "target"],
        table_rows,
        caption=(
            f"tok/s: real input tokens per second, median over {args.steps} timed steps x {args.repeats} repeat(s); "
            "tok/CPU-s: per second of the process's CPU time (less sensitive to other work on the machine); "
            "RSS GiB: peak resident memory of the process. computed/trained: tokens per step through the model "
            "(padding included) / positions with a loss term. "
            f"MFU: useful model FLOPs (about 6N per token full, 4N LoRA, + attention; see the docstring) over "
            f"the measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s. Load average {load_before} before, "
            f"{load_after} after. target: ours/TRL >= {TARGET_SPEEDUP}x tok/s and <= 1x peak memory."
        ),
    )
    if args.json:
        write_result(
            args.json,
            {
                "model": MODEL, "machine": info, "peak_flops": [peak_flops, peak_flops_end],
                "memory_bandwidth": bandwidth, "load_average": [load_before, load_after], "model_facts": facts,
                "data": {"source": source, "rows": stats["rows"], "skipped": stats["skipped"]},
                "settings": {k: getattr(args, k) for k in ("steps", "warmup", "repeats", "batch_size", "max_length", "seed")},
                "summary": summary_json, "measurements": raw, "wall_s": time.perf_counter() - started,
            },
        )
        console.print(f"wrote {args.json}")
    console.print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
