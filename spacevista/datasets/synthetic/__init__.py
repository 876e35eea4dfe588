"""Synthetic all-scale scenes: the same objects at every scale, told apart only by their background
(`scenes`: what a scene holds and the question it poses; `render`: its frames; `synth`: records, splits
and the cached parquet set)."""
