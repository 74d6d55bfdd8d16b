"""Write the toy verifiable task of examples/grpo.yaml: one-digit additions with their answers.

    python examples/data/make_arithmetic.py

Each row is {"prompt": "What is 3 + 8? Answer with the number only.", "answer": "11"}; the reward
function examples/rewards.py:short_and_correct reads "answer". Deterministic (fixed seed): running
it again rewrites the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TEMPLATES = [
    "What is {a} + {b}? Answer with the number only.",
    "Compute {a} + {b}. Reply with just the result.",
    "{a} + {b} = ? Give only the number.",
]


def rows(n: int, rng: random.Random) -> list[dict[str, str]]:
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        out.append({"prompt": rng.choice(TEMPLATES).format(a=a, b=b), "answer": str(a + b)})
    return out


def main() -> None:
    here = Path(__file__).resolve().parent / "arithmetic"
    here.mkdir(exist_ok=True)
    rng = random.Random(1234)
    for split, n in (("train", 256), ("test", 64)):
        with (here / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows(n, rng):
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
