"""Converters from the original checkpoint formats to diffusers models."""
