"""Names of the mnist benchmark's image lists and their sources (stdlib only: the run plan
checks a config against them while parsing, without importing the builder's torch stack)."""

SET_NAMES = (
    "train",
    "val_mnist",
    "test_mnist",
    "val_fashion",
    "test_fashion",
    "val_animals",
    "test_animals",
    "val_textures",
    "test_textures",
)
"""Image lists the builder can write (``datasets.<x>.list`` names one of them)."""

SOURCES_OF = {
    "train": "mnist",
    "val_mnist": "mnist",
    "test_mnist": "mnist",
    "val_fashion": "fashion",
    "test_fashion": "fashion",
    "val_animals": "animals",
    "test_animals": "animals",
}
"""The source role (``benchmark.mnist.sources`` key) each list is cut from (textures: none)."""
