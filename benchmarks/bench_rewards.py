"""Reward throughput: samples scored per second on one core, single process.

Realistic GRPO batches: prompts of mixed answer types (numeric with assorted units, choice, count,
text) across all scales, 8 completions per prompt, each a ~200-token <think> then <scale> and
<answer>; a tenth of them malformed. Usage: OMP_NUM_THREADS=1 python benchmarks/bench_rewards.py
"""

from __future__ import annotations

import argparse
import json
import random
import time

from spacevista.rewards import RewardPipeline, compute_score
from spacevista.scales import SCALES, format_output

WORDS = ("the chair is near the table so the distance between them looks like about two steps wide "
         "camera moves left then forward while the shelf stays behind the sofa and the lamp").split()
RECORDS = (  # (task, answer, ways the model writes a prediction: (format, factor from the record's unit) or text)
    ("object_size", {"type": "numeric", "value": 1.2, "unit": "m"},
     (("{:.2f} m", 1), ("{:.0f} cm", 100), ("{:.1f} meters", 1), ("{:.2f}", 1))),
    ("object_distance", {"type": "numeric", "value": 350.0, "unit": "cm"},
     (("{:.0f} cm", 1), ("{:.2f} m", 0.01), ("{:,.0f} mm", 10))),
    ("area", {"type": "numeric", "value": 12.5, "unit": "m2"},
     (("{:.1f} m²", 1), ("{:.1f} sq m", 1), ("{:.0f} square meters", 1))),
    ("relative_direction", {"type": "choice", "value": "B", "choices": ["left", "right", "behind", "front"]},
     ("A", "B. right", "(c)", "Answer: B")),
    ("count", {"type": "count", "value": 4}, ("4", "three", "5", "12")),
    ("description", {"type": "text", "value": "a wooden chair"}, ("wooden chair", "The wooden chair.", "a table")),
)


def make_batch(n_prompts: int, group_size: int, seed: int = 0) -> list[tuple]:
    """GRPO-shaped items (ground truth, completion, data_source, extra_info), grouped per prompt."""
    rng = random.Random(seed)
    items = []
    for _ in range(n_prompts):
        task, answer, spellings = rng.choice(RECORDS)
        scale = rng.choice(SCALES)
        truth = {"scale": scale, "task": task, "answer": {"unit": None, "choices": None, **answer}}
        for _ in range(group_size):
            think = " ".join(rng.choice(WORDS) for _ in range(rng.randint(140, 170)))  # ~200 tokens
            spelling = rng.choice(spellings)
            if answer["type"] == "numeric":
                template, factor = spelling
                spelling = template.format(answer["value"] * factor * rng.uniform(0.5, 1.5))
            completion = format_output(think, rng.choice((scale, scale, scale, rng.choice(SCALES))), spelling)
            if rng.random() < 0.1:
                completion = completion.replace("</answer>", "") if rng.random() < 0.5 else completion + " bye"
            items.append((truth, completion, "spacevista", None))
    return items


def measure(fn, repeats: int) -> float:
    """Best-of-`repeats` seconds for one call of fn."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4096)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    items = make_batch(args.prompts, args.group_size)
    pipeline = RewardPipeline()
    seconds = measure(lambda: pipeline.score_batch(items), args.repeats)
    verl_items = [(source, completion, json.dumps({**truth["answer"], "scale": truth["scale"], "task": truth["task"]}))
                  for truth, completion, source, _ in items]
    verl_seconds = measure(lambda: [compute_score(s, c, g) for s, c, g in verl_items], args.repeats)
    chars = sum(len(c) for _, c, _, _ in items) / len(items)
    print(f"{len(items)} samples ({args.prompts} prompts x {args.group_size}), mean completion {chars:.0f} chars")
    print(f"RewardPipeline.score_batch (stepwise): {len(items) / seconds:,.0f} samples/s")
    print(f"compute_score (verl, JSON ground truth): {len(verl_items) / verl_seconds:,.0f} samples/s")


if __name__ == "__main__":
    main()
