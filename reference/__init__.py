"""PyTorch reference of the solid_jax models (torch is an optional extra); see README.md."""
