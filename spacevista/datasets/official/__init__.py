"""SpaceVista-1M and SpaceVista-Bench ingest: the documented shapes (`sources`), their answers (`answers`)
and visual-prompt annotations (`annotations`) mapped to records (`convert`), whole files with a report
(`files`)."""
