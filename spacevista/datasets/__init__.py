"""Dataset makers: they write records (`spacevista.records`) and nothing at run time imports them.

`official` reads what the SpaceVista repository documents (SpaceVista-1M preview, flattened and full items,
SpaceVista-Bench entries) into records; `synthetic` draws all-scale scenes with exact answers; `cli` is
`spacevista data synth | convert`. Pure: numpy, pyarrow and PIL (no torch, no Ray).
"""
