"""Curation throughput, memory and near-duplicate accuracy on synthetic rows with planted duplicates.

    python benchmarks/curation_throughput.py                  # 10,000 and 100,000 rows
    python benchmarks/curation_throughput.py --sizes 100000 1000000

For each size a fresh process writes N synthetic conversations (random words from a 20,000-word
vocabulary) in which known rows are planted:

* near duplicates (10% of rows): an earlier row with 1 to 3 words of its answer substituted,
  inserted or deleted (word 3-gram Jaccard about 0.8 to 0.95), which the near_dedup step must remove;
* hard negatives (5%): an earlier row's question and the first third of its answer followed by new
  text (Jaccard about 0.3), which it must keep;

then curates them with the default steps (clean, quality, language, pii, exact_dedup, near_dedup)
and writes JSONL and a saved Hugging Face dataset. It prints rows/s (wall clock, and per CPU second,
which does not depend on other jobs sharing the machine), the peak resident memory of the
process (which must not grow with N: the rows stream and the dedup indexes are on disk), and the
precision and recall of the rows removed by near_dedup against the planted truth.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCABULARY = 20_000
NEAR_DUP_RATE = 0.10
HARD_NEGATIVE_RATE = 0.05
RECENT = 2_000  # earlier rows a planted row may copy (a bounded window keeps the generator's memory flat)


def words(rng: random.Random, n: int) -> list[str]:
    return [f"w{rng.randrange(VOCABULARY)}" for _ in range(n)]


def generate(path: Path, n: int, seed: int = 0) -> tuple[int, int]:
    """Write ``n`` rows; rows planted as near duplicates have ``"planted": "near"``. Returns the counts."""
    rng = random.Random(seed)
    recent: list[tuple[list[str], list[str], int]] = []
    near = hard = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            kind, roll, copy_of = "base", rng.random(), None
            if recent and roll < NEAR_DUP_RATE:
                kind = "near"
                question, answer, copy_of = rng.choice(recent)
                answer = list(answer)
                for _ in range(rng.randint(1, 3)):
                    op, at = rng.random(), rng.randrange(len(answer))
                    if op < 0.4:
                        answer[at] = f"w{rng.randrange(VOCABULARY)}"
                    elif op < 0.7:
                        answer.insert(at, f"w{rng.randrange(VOCABULARY)}")
                    else:
                        del answer[at]
                near += 1
            elif recent and roll < NEAR_DUP_RATE + HARD_NEGATIVE_RATE:
                kind = "hard_negative"
                question, answer, copy_of = rng.choice(recent)
                answer = answer[: len(answer) // 3] + words(rng, len(answer) - len(answer) // 3)
                hard += 1
            else:
                question, answer = words(rng, rng.randint(8, 16)), words(rng, rng.randint(60, 120))
                recent.append((question, answer, i))
                if len(recent) > RECENT:
                    recent.pop(rng.randrange(len(recent)))
            row = {
                "messages": [
                    {"role": "user", "content": " ".join(question) + "?"},
                    {"role": "assistant", "content": " ".join(answer) + "."},
                ],
                "id": i,
                "planted": kind,
                "copy_of": copy_of,
                "language": "en",
            }
            f.write(json.dumps(row) + "\n")
    return near, hard


def child(n: int, formats: list[str]) -> dict:
    from affinage.config import from_dict
    from affinage.curation import CurateConfig, curate

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        t0 = time.perf_counter()
        near, hard = generate(data, n)
        generated_s = time.perf_counter() - t0
        cfg = from_dict(CurateConfig, {
            "sources": [{"path": str(data), "name": "synthetic"}],
            # Synthetic words are no language: identification runs (its cost is measured) but filters nothing.
            "steps": ["clean", "quality", {"step": "language", "declared": "check"}, "pii", "exact_dedup",
                      {"step": "near_dedup", "threshold": 0.7}],
            "output": {"dir": str(Path(tmp) / "out"), "formats": formats, "removed": True, "card": True},
        })
        cfg.validate()
        cpu0 = time.process_time()
        result = curate(cfg)
        cpu_s = time.process_time() - cpu0
        stats = result.stats
        removed_near = planted_removed = 0
        other_steps = 0
        with open(result.output_dir / "removed.jsonl", encoding="utf-8") as f:
            for line in f:
                item = json.loads(line)
                if item["step"] == "near_dedup":
                    removed_near += 1
                    planted_removed += item["row"]["planted"] == "near"
                elif item["row"]["planted"] == "near":
                    other_steps += 1
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rows": n, "generate_s": generated_s, "curate_s": stats.seconds, "rows_per_s": n / stats.seconds,
        "cpu_s": cpu_s, "rows_per_cpu_s": n / cpu_s,
        "peak_mib": peak_mib, "planted_near": near, "hard_negatives": hard, "removed_near": removed_near,
        "true_positives": planted_removed, "planted_removed_by_other_steps": other_steps,
        "precision": planted_removed / removed_near if removed_near else 0.0,
        "recall": planted_removed / near if near else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--formats", nargs="+", default=["jsonl", "hf"], choices=["jsonl", "parquet", "hf"])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.formats)))
        return
    results = []
    for n in args.sizes:
        command = [sys.executable, __file__, "--child", str(n), "--formats", *args.formats]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"size {n} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = f"{'rows':>9} {'rows/s':>8} {'curate s':>9} {'CPU s':>7} {'rows/CPU s':>10} {'peak MiB':>9} " \
             f"{'planted':>8} {'removed':>8} {'precision':>9} {'recall':>7}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['rows']:>9,} {r['rows_per_s']:>8,.0f} {r['curate_s']:>9.1f} {r['cpu_s']:>7.1f} "
              f"{r['rows_per_cpu_s']:>10,.0f} {r['peak_mib']:>9.0f} "
              f"{r['planted_near']:>8,} {r['removed_near']:>8,} {r['precision']:>9.4f} {r['recall']:>7.4f}")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"\n{b['rows'] / a['rows']:.0f}x the rows: peak memory x{b['peak_mib'] / a['peak_mib']:.2f} "
              f"({a['peak_mib']:.0f} -> {b['peak_mib']:.0f} MiB)")
    ok = all(r["precision"] >= 0.95 and r["recall"] >= 0.95 for r in results)
    print(f"target precision >= 0.95 and recall >= 0.95: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
