"""SpaceVista-RL."""
