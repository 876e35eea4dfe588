"""SpaceVista-7B's dense branch: a frozen self-supervised frame encoder (`encoders`), its features cached
per frame (`cache`), projected and fused into the visual tokens by gated cross-attention (`fusion`), and
hooked into the vision tower (`branch`)."""
