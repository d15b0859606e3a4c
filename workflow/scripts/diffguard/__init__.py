"""DiffGuard reproduction: semantic-mismatch-guided OOD detection with diffusion models."""

__version__ = "0.1.0"
