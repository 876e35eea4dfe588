"""`spacevista study`: the paper's ablations as named grids of variants x seeds, each run trained and
evaluated on the full held-out split, reported with standard errors and paired 95% intervals."""

from spacevista.study.presets import PRESETS, Study, Variant

__all__ = ["PRESETS", "Study", "Variant"]
