"""Evaluation: generate benchmark answers with a checkpoint's scale experts (`run`), score them the
SpaceVista-Bench way (`scoring`, `summary`: pure, no torch or ray), and report (`report`).

`spacevista eval run | score | compare` (eval/cli.py).
"""
