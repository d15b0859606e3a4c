"""Rule torch_hub: verified perceptual-metric weights under <torch_hub_dir>/checkpoints."""

from diffguard.downloads import setup_file_logging
from diffguard.openood import link_into_hub

sm = snakemake  # noqa: F821
setup_file_logging(sm.log[0])
link_into_hub(dict(zip(sm.params.names, sm.input.files, strict=True)), sm.params.hub_dir)
