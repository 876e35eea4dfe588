"""The Ray roles and the recipe: rollout and reward workers (`workers`, `pool`), the learner group
(`learner`), the controller loop (`controller`), recovery (`recovery`) and the console report (`report`)."""
