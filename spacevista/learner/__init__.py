"""The learner: what trains the policy, with no Ray of its own (the Ray actors are `spacevista.actors`).

`core` (`LearnerCore`: the RL and SFT steps), `state` (its weights out and checkpoints in), `routing` (the
router's features and loss on a training batch), `logprobs`, `objectives` (verl's estimators and losses),
`optim`, `sharding` (FSDP2), `memory` (activation checkpointing, token-budget micro-batches), `batch`
(verl's `DataProto`, which imports Ray, enters the package here) and `checkpoint_files` (the plain-format
files of a checkpoint). Modules import lazily: `learner.checkpoint_files` loads neither verl nor Ray.
"""
