"""Build and load the policy: a tiny offline Qwen2.5-VL, or a real checkpoint from a local directory.

The tiny policy is a real Qwen2.5-VL architecture with random weights, a byte-level BPE tokenizer
trained on the fly (Qwen pre-tokenizer, Qwen-VL special tokens, Qwen2-VL chat template) and the
model's own image and video processors. It is saved as an ordinary Hugging Face directory, cached
under a key derived from its config and tokenizer corpus, so `load_policy` treats it exactly like
a downloaded checkpoint. Nothing here touches a model hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch

from spacevista.atomic_dir import build_once
from spacevista.configs.policy import TinyPolicyConfig

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL's chat template without the default system prompt (it costs tokens on a tiny model).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in state["merges"]]
    tok = Qwen2Tokenizer(vocab=state["vocab"], merges=merges,
                         additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _build_processor(tokenizer, cfg: TinyPolicyConfig):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=cfg.image_min_pixels, max_pixels=cfg.image_max_pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=cfg.image_min_pixels, max_pixels=cfg.image_max_pixels,
                                            do_sample_frames=False)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def _build_model(tokenizer, cfg: TinyPolicyConfig):
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": cfg.resolved_mrope_section()},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=eos, pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=cfg.vision_depth, hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
            num_heads=cfg.vision_heads, out_hidden_size=cfg.hidden_size,
            fullatt_block_indexes=[cfg.vision_depth - 1], window_size=112,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.bos_token_id, config.eos_token_id, config.pad_token_id = ids["<|endoftext|>"], eos, ids["<|endoftext|>"]
    torch.manual_seed(cfg.seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=eos, pad_token_id=ids["<|endoftext|>"], do_sample=False)
    return model


def policy_cache_key(cfg: TinyPolicyConfig, corpus: list[str]) -> str:
    """Stable key for (architecture, tokenizer corpus): the cache directory name."""
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for line in corpus:
        h.update(line.encode())
        h.update(b"\n")
    return "tiny-qwen2_5_vl-" + h.hexdigest()[:16]


def build_tiny_policy(cache_dir: str | os.PathLike, corpus: Iterable[str],
                      cfg: TinyPolicyConfig | None = None) -> Path:
    """Build (or reuse from cache) the tiny policy directory of architecture `cfg` (default: the
    embedded training default); returns its path.

    Written to a temporary directory and renamed into place (`atomic_dir.build_once`), so a crash never
    leaves a half-written cache entry and concurrent builders (e.g. several Ray actors) agree on one result.
    """
    cfg = cfg or TinyPolicyConfig()
    corpus = [c for c in corpus if c]
    if not corpus:
        raise ValueError("build_tiny_policy: the tokenizer corpus is empty")

    def build(tmp: Path) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        tokenizer = _train_tokenizer(corpus, cfg.vocab_size)
        processor = _build_processor(tokenizer, cfg)
        model = _build_model(tokenizer, cfg)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "spacevista_tiny.json").write_text(json.dumps(asdict(cfg), indent=1))

    return build_once(Path(cache_dir) / policy_cache_key(cfg, corpus), build, marker="config.json")


ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "auto")


def resolve_attn_implementation(name: str, device: str) -> str:
    """The attention kernel to load: `auto` is flash_attention_2 on CUDA when flash-attn is
    installed, else sdpa; flash_attention_2 asked for where it cannot run fails here, naming why."""
    import importlib.util

    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={name!r}: choose from {ATTENTION_IMPLEMENTATIONS}")
    flash_ok = importlib.util.find_spec("flash_attn") is not None and str(device).startswith("cuda")
    if name == "auto":
        return "flash_attention_2" if flash_ok else "sdpa"
    if name == "flash_attention_2" and not flash_ok:
        raise ValueError("attn_implementation=flash_attention_2 needs CUDA and the flash-attn package "
                         f"(device {device!r}); use sdpa or auto")
    return name


def load_policy(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu",
                attn_implementation: str = "sdpa"):
    """Load (model, processor) from a local Hugging Face directory: tiny or real, same path.

    `attn_implementation` (sdpa | eager | flash_attention_2 | auto) applies to the text and vision towers.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (expected a Hugging Face directory with config.json)")
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, attn_implementation=resolve_attn_implementation(attn_implementation, device)).to(device)
    model.eval()
    return model, processor
