"""Progressive curriculum across scales (pure logic, no Ray)."""

from spacevista.curriculum.schedule import Curriculum, CurriculumError, StageChange, validate_stages

__all__ = ["Curriculum", "CurriculumError", "StageChange", "validate_stages"]
