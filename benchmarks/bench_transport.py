"""Rollout -> learner prompt transport at a realistic size: processed float32 pixels vs the decoded uint8 frames.

    OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/bench_transport.py \
        [--prompts 8] [--frames 16] [--size 448] [--repeats 3]

Today a rollout worker encodes each prompt once (the processor: resize, normalise, patchify) and the learner
receives the encoded prompt, float32 `pixel_values_videos` included, through the object store (one object per
prompt, shared by its n samples). The alternative ships the decoded uint8 frames and runs the processor again
on the learner. Per step of `--prompts` prompts with one `--frames`-frame `--size` px video each, this measures:
the bytes of each form, the processor's time to encode them (what the alternative adds to the learner), and
the object-store round trip of each form from one local Ray actor to another (put in one process, get in
another: the same-node path; across nodes add the bytes over the network).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TEST_POLICY, policy_corpus  # noqa: E402  (the tests' policy)

from spacevista.policies.prompts import encode_prompts  # noqa: E402
from spacevista.policies.tiny import build_tiny_policy, load_policy  # noqa: E402
from spacevista.rollout.engine import GenerationRequest  # noqa: E402


def frames(count: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def nbytes(obj) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    return sum(t.numel() * t.element_size() for t in obj.media.values()) + 8 * len(obj.input_ids)


@ray.remote(num_cpus=0)
class Sink:
    def fetch(self, refs: list) -> float:
        start = time.perf_counter()
        ray.get(refs)
        return time.perf_counter() - start


@ray.remote(num_cpus=0)
class Source:
    def put(self, objs: list) -> tuple[list, float]:
        start = time.perf_counter()
        refs = [ray.put(o) for o in objs]
        return refs, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-pixels", type=int, default=12845056,
                        help="the video processor's max pixels per frame (Qwen2.5-VL's default; 0: the tiny policy's)")
    args = parser.parse_args()
    path = build_tiny_policy(Path(tempfile.gettempdir()) / "spacevista-bench", policy_corpus(), TEST_POLICY)
    _, processor = load_policy(path)
    if args.max_pixels:  # the tiny policy's processor shrinks frames to a few patches; a 7B's does not
        video = processor.video_processor
        video.size = type(video.size)(shortest_edge=video.size.shortest_edge, longest_edge=args.max_pixels)
    videos = [frames(args.frames, args.size, seed) for seed in range(args.prompts)]
    requests = [GenerationRequest(f"r{i}", [{"role": "user", "content": "<video> How far apart are they?"}],
                                  "indoor", videos=[v]) for i, v in enumerate(videos)]
    encode_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        encoded = encode_prompts(processor, requests)
        encode_s.append(time.perf_counter() - start)
    raw = [np.stack([np.asarray(f) for f in v]) for v in videos]
    grid = encoded[0].media.get("video_grid_thw")
    print(f"{args.prompts} prompts x 1 video of {args.frames} frames at {args.size}x{args.size} px; video grid "
          f"{grid.tolist() if grid is not None else '-'}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"processor (encode on the learner, the uint8 path's extra work): median {statistics.median(encode_s):.3f} s "
          f"per step ({statistics.median(encode_s) / args.prompts * 1000:.0f} ms a prompt)")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="rb-"))
    try:
        source, sink = Source.remote(), Sink.remote()
        for name, objs in (("float32 encoded prompts", encoded), ("uint8 frames", raw)):
            puts, gets = [], []
            for _ in range(args.repeats):
                refs, put_s = ray.get(source.put.remote(objs))
                gets.append(ray.get(sink.fetch.remote(refs)))
                puts.append(put_s)
                del refs
            size = sum(nbytes(o) for o in objs)
            print(f"{name}: {size / 2**20:.1f} MiB a step; put {statistics.median(puts):.3f} s, get in another "
                  f"process {statistics.median(gets):.3f} s (medians of {args.repeats})")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
