"""Learner memory: activation checkpointing that works with our forwards, and token-budget micro-batches.

Activation checkpointing. transformers' own (`gradient_checkpointing_enable`) runs only in training
mode and drops `past_key_values`; we train in eval mode (peft's mixed-expert `adapter_names=`
requires it) and the shared-prompt forward builds and reads a KV cache. So each decoder layer and
vision block is wrapped with torch's non-reentrant `checkpoint`, and the recomputation in backward
replays what the first forward saw: the layer's entry in the KV cache (attention appends to it),
and the peft state of its LoRA layers (the `adapter_names` pre-hooks and the adapters-disabled flag,
both gone by the time backward runs). Under FSDP2 the wrapped forward sits inside each sharded
module, so the recomputation runs while backward has the layer's weights gathered.

Token-budget micro-batches (the idea of verl's `use_dynamic_bsz`): a micro-batch holds at most
`max_tokens` real tokens instead of a fixed row count. With shared prompts, the n samples of a
prompt stay together (their prompt is computed once, so it is counted once). Every rank must run the
same number of micro-batches (FSDP's collectives), so ranks agree on the largest count and balance
their rows into that many. Each micro-batch drops the left-padding columns no row of it uses.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from torch.utils.checkpoint import checkpoint
from verl import DataProto

from spacevista.learner.logprobs import prompt_groups

# ---- activation checkpointing --------------------------------------------------------------------


def checkpoint_activations(model: PeftModel) -> int:
    """Recompute every decoder layer and vision block in backward instead of keeping its activations.

    Applies in place (call before sharding or after: FSDP2's hooks stay outside); returns how many
    modules were wrapped. Forwards without gradients (reference log-probs, rollout) are unchanged.
    """
    hf = model.get_base_model() if isinstance(model, PeftModel) else model
    modules = list(hf.model.language_model.layers) + list(hf.model.visual.blocks)
    for module in modules:
        _wrap(module)
    return len(modules)


def _wrap(module: nn.Module) -> None:
    inner = module.forward
    attention = getattr(module, "self_attn", None)
    cache_index = getattr(attention, "layer_idx", None)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        cache = kwargs.get("past_key_values") if cache_index is not None else None
        replay = _ForwardState(module, cache, cache_index)
        calls = 0

        def run(*a: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return inner(*a, **kw)
            with replay.restored():  # the recomputation in backward
                return inner(*a, **kw)

        return checkpoint(run, *args, use_reentrant=False, **kwargs)

    module.forward = forward


class _ForwardState:
    """What a module's forward depends on besides its arguments, captured at forward time."""

    def __init__(self, module: nn.Module, cache: Any, cache_index: int | None) -> None:
        self.hooks = [(m, dict(m._forward_pre_hooks), dict(m._forward_pre_hooks_with_kwargs),
                       getattr(m, "_disable_adapters", None)) for m in module.modules() if m is not module]
        self.cache, self.cache_index = cache, cache_index
        self.cache_layer = None
        if cache is not None and cache_index < len(cache.layers):
            self.cache_layer = copy.copy(cache.layers[cache_index])  # update() rebinds keys/values: a shallow copy

    @contextmanager
    def restored(self) -> Iterator[None]:
        now = [(m, m._forward_pre_hooks, m._forward_pre_hooks_with_kwargs, getattr(m, "_disable_adapters", None))
               for m, *_ in self.hooks]
        live_layer = None
        try:
            for m, pre, with_kwargs, disabled in self.hooks:
                m._forward_pre_hooks, m._forward_pre_hooks_with_kwargs = copy.copy(pre), copy.copy(with_kwargs)
                if disabled is not None:
                    m._disable_adapters = disabled
            if self.cache is not None:
                live_layer = self.cache.layers[self.cache_index]
                self.cache.layers[self.cache_index] = self._empty_like(live_layer)
            yield
        finally:
            for m, pre, with_kwargs, disabled in now:
                m._forward_pre_hooks, m._forward_pre_hooks_with_kwargs = pre, with_kwargs
                if disabled is not None:
                    m._disable_adapters = disabled
            if live_layer is not None:
                self.cache.layers[self.cache_index] = live_layer

    def _empty_like(self, live: Any) -> Any:
        if self.cache_layer is not None:
            return copy.copy(self.cache_layer)
        empty = copy.copy(live)  # the layer did not exist before this forward
        empty.keys, empty.values, empty.is_initialized = None, None, False
        return empty


# ---- token-budget micro-batches ------------------------------------------------------------------


def row_tokens(batch: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt tokens, response tokens) per row, padding excluded."""
    width = batch.batch["responses"].shape[1]
    mask = batch.batch["attention_mask"]
    return mask[:, :-width].sum(1), mask[:, -width:].sum(1)


def _units(batch: DataProto, share_prompts: bool, max_tokens: int) -> list[tuple[int, list[int]]]:
    """(cost, rows) of the pieces a micro-batch is made of: a row, or a prompt's rows when shared."""
    prompt, response = (t.tolist() for t in row_tokens(batch))
    if not share_prompts:
        return [(prompt[i] + response[i], [i]) for i in range(len(batch))]
    groups = prompt_groups(batch, list(batch.non_tensor_batch["expert"]))
    members: dict[int, list[int]] = {}
    for row, k in enumerate(groups.inverse.tolist()):
        members.setdefault(k, []).append(row)
    units = []
    for rows in members.values():
        chunk: list[int] = []
        for row in rows:  # a group over the budget is cut into chunks, each with its own prompt pass
            if chunk and prompt[row] + sum(response[r] for r in chunk + [row]) > max_tokens:
                units.append(chunk)
                chunk = []
            chunk.append(row)
        units.append(chunk)
    return [(prompt[rows[0]] + sum(response[r] for r in rows), rows) for rows in units]


def _balance(units: list[tuple[int, list[int]]], k: int) -> list[tuple[int, list[int], int]]:
    """Largest piece first into the lightest of k bins: (load, sorted rows, pieces) per bin, by first row."""
    bins: list[tuple[int, int, list[int], int]] = [(0, b, [], 0) for b in range(k)]
    for cost, rows in sorted(units, key=lambda u: (-u[0], u[1][0])):
        load, b, held, pieces = heapq.heappop(bins)
        heapq.heappush(bins, (load + cost, b, held + rows, pieces + 1))
    return sorted(((load, sorted(rows), pieces) for load, _, rows, pieces in bins), key=lambda x: x[1][0])


def _split_to(units: list[tuple[int, list[int]]], k: int, cost: Callable[[list[int]], int]) -> list:
    """Cut the largest multi-row pieces in halves until there are at least k pieces."""
    units = list(units)
    while len(units) < k:
        splittable = [u for u in units if len(u[1]) > 1]
        if not splittable:
            raise ValueError(f"cannot fill {k} micro-batches with {len(units)} rows: give every rank as many samples")
        piece = max(splittable, key=lambda u: u[0])
        units.remove(piece)
        half = len(piece[1]) // 2
        units += [(cost(piece[1][:half]), piece[1][:half]), (cost(piece[1][half:]), piece[1][half:])]
    return units


def token_budget_plan(batch: DataProto, max_tokens: int, share_prompts: bool, count: int | None = None
                      ) -> list[list[int]]:
    """Row indices of each micro-batch: the fewest that keep each under `max_tokens` (a piece larger
    than the budget gets a micro-batch of its own), or exactly `count` balanced ones when given."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    units = _units(batch, share_prompts, max_tokens)
    prompt, response = (t.tolist() for t in row_tokens(batch))

    def cost(rows: list[int]) -> int:
        return (prompt[rows[0]] if share_prompts else sum(prompt[r] for r in rows)) + sum(response[r] for r in rows)

    if count is not None:
        return [rows for _, rows, _ in _balance(_split_to(units, count, cost), count)]
    total = sum(c for c, _ in units)
    for k in range(min(len(units), max(1, -(-total // max_tokens))), len(units) + 1):
        bins = _balance(units, k)
        if all(load <= max_tokens or pieces == 1 for load, _, pieces in bins):  # an oversize piece sits alone
            break
    return [rows for _, rows, _ in bins]


def trim_left_padding(batch: DataProto) -> DataProto:
    """Drop the prompt columns that are padding in every row (left padding is never attended)."""
    mask = batch.batch["attention_mask"]
    used = mask.any(0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start == 0:
        return batch
    width = mask.shape[1]
    tensors = {k: (v[:, start:] if v.dim() >= 2 and v.shape[1] == width else v) for k, v in batch.batch.items()}
    return DataProto.from_dict(tensors=tensors, non_tensors=dict(batch.non_tensor_batch), meta_info=batch.meta_info)
