"""Rule torch_hub: verified perceptual-metric weights under <torch_hub_dir>/checkpoints."""

from diffguard.openood import link_into_hub
from diffguard.runtime import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
link_into_hub(dict(zip(sm.params.names, sm.input.files, strict=True)), sm.params.hub_dir)
