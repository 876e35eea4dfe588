"""`eval run`: generate answers for benchmark records with a checkpoint's experts, then score them.

Top to bottom: read records -> per batch: decode frames, route each prompt to an expert (learned
router, the record's label, or the base model: `BASE_EXPERT`) -> generate (greedy by default) ->
EvalSample per record. One in-process engine by default; `workers > 1` fans batches out to Ray
rollout workers (eval/parallel.py). Scoring (eval/scoring.py) never sees torch or Ray.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from spacevista.configs.dense import DenseConfig
from spacevista.configs.schema import ModelConfig, RolloutConfig
from spacevista.datasets.official.convert import ConvertOptions, Reject, convert_item, item_id
from spacevista.datasets.official.files import iter_source
from spacevista.records.frames import load_images, load_video
from spacevista.records.io import iter_records
from spacevista.records.schema import Record
from spacevista.eval.policy import EvalError, EvalPolicy
from spacevista.eval.scoring import EvalSample
from spacevista.grammar.truth import parse_ground_truth
from spacevista.rollout.engine import BASE_EXPERT, Completion, GenerationRequest, SamplingParams

ROUTINGS = ("learned", "label", "none")
DEFAULT_MAX_MODEL_LEN = 8192


@dataclass(frozen=True)
class RunOptions:
    routing: str = "learned"  # learned | label | none (the base policy: every prompt to BASE_EXPERT)
    engine: str = "hf"  # hf | vllm
    max_tokens: int = 512
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    batch_size: int = 16  # prompts per generate call
    workers: int = 1  # > 1: Ray rollout workers
    dtype: str = "auto"  # a torch dtype name; auto: bfloat16 on GPU, float32 on CPU
    max_model_len: int | None = None  # vLLM only; None: the model's own limit, at most DEFAULT_MAX_MODEL_LEN


class Generator(Protocol):
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]: ...


def read_eval_records(path: str | Path, limit: int | None = None) -> list[Record]:
    """The first `limit` records of a parquet file or shard directory; a synthetic dataset's root
    (manifest.json + train/ + test/, as `spacevista data synth` writes it) means its held-out test split;
    a JSON / JSONL file is read as SpaceVista-Bench entries (or any shape `data convert` takes)."""
    path = Path(path)
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        return read_bench_entries(path, limit)
    if (path / "manifest.json").is_file() and (path / "test").is_dir():
        path = path / "test"
    return list(islice(iter_records(path), limit))


def read_bench_entries(path: Path, limit: int | None = None) -> list[Record]:
    """Bench entries converted in memory (frames relative to the file's folder, visual prompts drawn
    when decoded). An entry that cannot be converted fails the run, naming it: a benchmark score over
    a silently smaller set would not compare with anyone's."""
    options = ConvertOptions(media_root=path.resolve().parent, data_source="spacevista_bench", split="test")
    records, rejects = [], []
    for index, item in enumerate(islice(iter_source(path), limit)):
        try:
            if isinstance(item, Reject):
                raise item
            records.append(convert_item(item, index, options))
        except Reject as reject:
            rejects.append(f"entry {index} (id {item_id(item)!r}): {reject}")
    if rejects:
        shown = "; ".join(rejects[:5]) + (f"; and {len(rejects) - 5} more" if len(rejects) > 5 else "")
        raise EvalError(f"{path}: {len(rejects)} of {len(rejects) + len(records)} entries cannot be evaluated: {shown}")
    return records


def evaluate(policy: EvalPolicy, records: Sequence[Record],
             options: RunOptions) -> tuple[list[EvalSample], dict[str, Any]]:
    """Generate and wrap every record's answer; also run statistics (seconds, tokens, truncation)."""
    if options.routing not in ROUTINGS:
        raise EvalError(f"routing {options.routing!r} is not one of {ROUTINGS}")
    if options.routing == "learned" and policy.router is None:
        raise EvalError(f"{policy.checkpoint} has no trained learned router: pass --router label to route "
                        f"each record to its own scale's expert")
    start = time.perf_counter()
    params = SamplingParams(n=1, temperature=options.temperature, max_tokens=options.max_tokens, seed=options.seed)
    samples: list[EvalSample] = []
    lengths, truncated = [], 0
    generator = _generator(policy, options)
    try:
        features = _FeatureModel(policy, options, generator) if options.routing == "learned" else None
        with tqdm(total=len(records), desc="eval", unit="record", dynamic_ncols=True) as bar:
            for batch in _chunks(records, options.batch_size):
                requests = [_request(r) for r in batch]
                experts = _route(batch, requests, policy, options.routing, features)
                for request, expert in zip(requests, experts):
                    request.expert = expert
                completions = generator.generate(requests, params)
                for record, completion in zip(batch, completions):
                    samples.append(_sample(record, completion, options.routing))
                    lengths.append(len(completion.response_ids))
                    truncated += completion.finish_reason == "length"
                bar.update(len(batch))
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()
    stats = {"seconds": round(time.perf_counter() - start, 2),
             "mean_response_tokens": sum(lengths) / max(len(lengths), 1),
             "truncated_fraction": truncated / max(len(lengths), 1)}
    return samples, stats


def _chunks(records: Sequence[Record], size: int) -> Iterator[Sequence[Record]]:
    for i in range(0, len(records), max(1, size)):
        yield records[i:i + size]


def _request(record: Record) -> GenerationRequest:
    """The record's prompt and decoded frames; the expert is set by routing."""
    return GenerationRequest(request_id=record.id, messages=list(record.prompt), expert=BASE_EXPERT,
                             images=load_images(record),
                             videos=[load_video(record, v) for v in range(len(record.videos))])


def _sample(record: Record, completion: Completion, routing: str) -> EvalSample:
    meta = record.meta
    return EvalSample(id=record.id, scale=record.scale, task=record.task,
                      truth=parse_ground_truth(record.ground_truth_dict()),
                      ground_truth=meta.get("source_answer") or record.answer.text(),
                      prediction=completion.text, routed_expert=None if routing == "none" else completion.expert,
                      input_type=meta.get("input_type") or "image_text", question=meta.get("question", ""),
                      original_type=meta.get("source_task"),
                      num_frames=sum(len(v) for v in record.videos) + len(record.images))


def _route(records: Sequence[Record], requests: Sequence[GenerationRequest], policy: EvalPolicy, routing: str,
           features: _FeatureModel | None) -> list[str]:
    if routing == "none":
        return [BASE_EXPERT] * len(records)
    if routing == "label":  # the expert training routed the record's scale to (configs.experts)
        served = policy.expert_of_scale or {e: e for e in policy.experts}
        missing = [r for r in records if served.get(r.scale) not in policy.experts]
        if missing:
            raise EvalError(f"record {missing[0].id!r} has scale {missing[0].scale!r}, which has no expert in "
                            f"{policy.checkpoint} (experts: {policy.experts})")
        return [served[r.scale] for r in records]
    return policy.router.predict(features(requests))


def _torch_dtype(options: RunOptions) -> str:
    if options.dtype != "auto":
        if not isinstance(getattr(torch, options.dtype, None), torch.dtype):
            raise EvalError(f"--dtype {options.dtype!r} is not a torch dtype name")
        return options.dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


def _configs(policy: EvalPolicy, options: RunOptions) -> tuple[ModelConfig, RolloutConfig]:
    model = ModelConfig(path=str(policy.model_path), dtype=_torch_dtype(options), lora=policy.lora,
                        experts=list(policy.experts), dense=policy.dense or DenseConfig())
    rollout = RolloutConfig(engine=options.engine, max_tokens=options.max_tokens,
                            max_model_len=options.max_model_len or _max_model_len(policy.model_path),
                            max_batch_size=options.batch_size)
    return model, rollout


def _max_model_len(model_path: Path) -> int:
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(model_path).get_text_config()
    return min(DEFAULT_MAX_MODEL_LEN, getattr(text, "max_position_embeddings", DEFAULT_MAX_MODEL_LEN))


def _generator(policy: EvalPolicy, options: RunOptions) -> Generator:
    model, rollout = _configs(policy, options)
    if options.workers > 1:
        from spacevista.eval.parallel import RayRollout

        return RayRollout(options.workers, policy.model_path, model, rollout, policy.weights,
                          policy.dense_weights if policy.dense else None)
    from spacevista.rollout import make_engine

    engine = make_engine(rollout, str(policy.model_path), model)
    if policy.weights:
        engine.update_experts(1, policy.weights)
    if policy.dense:
        _load_fusion(engine.dense, policy)
    return engine


def _load_fusion(branch, policy: EvalPolicy) -> None:
    """The checkpoint's dense fusion into `branch`, refused when trained on another encoder's features."""
    try:
        branch.load_state(policy.dense_weights, policy.dense_meta, f"{policy.checkpoint} dense fusion")
    except ValueError as err:
        raise EvalError(str(err)) from None


class _FeatureModel:
    """The router's prompt features, from the in-process HF engine's model or from the base model."""

    def __init__(self, policy: EvalPolicy, options: RunOptions, generator: Generator):
        from spacevista.rollout.hf_engine import HFEngine

        if isinstance(generator, HFEngine):
            self.model, self.processor = generator.model, generator.processor
        else:
            from spacevista.policies.tiny import load_policy

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model, self.processor = load_policy(policy.model_path, getattr(torch, _torch_dtype(options)), device)
            if policy.dense:  # the router was trained on the fused visual tokens
                from spacevista.policies.dense.branch import DenseBranch

                _load_fusion(DenseBranch.build(policy.dense, self.model, self.processor, device), policy)

    def __call__(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        from spacevista.policies.prompts import encode_batch
        from spacevista.policies.router import prompt_features

        return prompt_features(self.model, encode_batch(self.processor, requests)[0]).cpu()
