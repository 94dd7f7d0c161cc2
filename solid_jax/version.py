"""The single version string of solid_jax."""

__version__ = "0.1.0"
