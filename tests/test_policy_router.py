"""Scale router: label routing, the learned classifier, and prompt features."""

from __future__ import annotations

from dataclasses import replace

import torch
from PIL import Image

from spacevista.learner.batch import collate
from spacevista.policies.chat import to_chat_messages
from spacevista.learner.core import LearnerCore
from spacevista.learner.routing import batch_prompt_features
from spacevista.policies.router import RouterConfig, ScaleRouter, prompt_features
from spacevista.policies.tiny import load_policy
from spacevista.scales import SCALES


def _synthetic(n_per_scale: int, dim: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Features: one noisy cluster per scale."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(SCALES), dim, generator=torch.Generator().manual_seed(0))
    labels = [s for s in SCALES for _ in range(n_per_scale)]
    index = torch.tensor([SCALES.index(s) for s in labels])
    return centres[index] + 0.7 * torch.randn(len(labels), dim, generator=g), labels


def _trained_router(dim: int = 16) -> ScaleRouter:
    torch.manual_seed(0)
    router = ScaleRouter(SCALES, dim, RouterConfig(hidden=32))
    optimizer = torch.optim.AdamW(router.parameters(), lr=1e-2)
    features, labels = _synthetic(40, dim, seed=1)
    for _ in range(60):
        loss, n = router.loss(features, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        router.trained_steps += 1
    assert n == len(labels)
    return router


def test_classifier_separates_scales_and_reports_per_scale_accuracy():
    router = _trained_router()
    features, labels = _synthetic(20, 16, seed=2)  # held out
    report = router.accuracy(features, labels)
    assert set(report) == {f"router/acc/{s}" for s in SCALES} | {"router/acc"}
    assert all(v >= 0.9 for v in report.values()), report


def test_labels_accept_any_spelling_of_a_scale_and_unknown_ones_are_left_out():
    router = ScaleRouter(SCALES, 8, RouterConfig(learn=False))
    index = router.label_index(["Tiny Tabletop", "drone", "TinyTabletop", None, "underwater"]).tolist()
    assert index == [SCALES.index("tiny_tabletop"), SCALES.index("drone"), SCALES.index("tiny_tabletop"), -1, -1]


def test_a_trained_router_predicts_the_scale_from_features():
    router = _trained_router()
    features, labels = _synthetic(5, 16, seed=4)
    predicted = router.predict(features)
    assert sum(p == lab for p, lab in zip(predicted, labels)) >= 0.9 * len(labels)


def test_prompt_features_pool_the_prompt_only(tiny_policy_dir, policy_samples):
    model, processor = load_policy(tiny_policy_dir)
    samples = policy_samples(3, SCALES)  # image, video, text
    texts = [processor.apply_chat_template(to_chat_messages(s.messages, len(s.images), len(s.videos)),
                                           add_generation_prompt=True, tokenize=False) for s in samples]
    prompts = processor(text=texts, images=samples[0].images, videos=samples[1].videos, padding=True,
                        return_tensors="pt")
    from_prompts = prompt_features(model, prompts)
    longer = [replace(s, response_ids=s.response_ids * 3) for s in samples]  # responses must not matter
    from_batch = batch_prompt_features(model, collate(processor, longer))
    torch.testing.assert_close(from_batch, from_prompts, atol=1e-5, rtol=1e-5)
    hidden = from_batch.shape[1] // 2
    assert from_batch[0, hidden:].abs().sum() > 0 and from_batch[1, hidden:].abs().sum() > 0
    assert torch.all(from_batch[2, hidden:] == 0)  # text only: no vision part


def test_learner_trains_the_router_on_scale_labels(tiny_policy_dir, policy_samples):
    learner = LearnerCore(tiny_policy_dir, SCALES, router=RouterConfig(lr=1e-2), micro_batch_size=10)
    colours = {s: (50 * i, 255 - 50 * i, 100) for i, s in enumerate(SCALES)}
    samples = [replace(s, images=[Image.new("RGB", (56, 56), colours[s.expert])])
               for s in policy_samples(10, SCALES, media=("image",))]
    batch = collate(learner.processor, samples)
    reports = [learner.rl_step(batch) for _ in range(25)]
    assert reports[-1]["router/loss"] < 0.5 * reports[0]["router/loss"]
    assert reports[-1]["router/acc"] == 1.0
    assert learner.router.has_classifier
