"""Rule select_images: fix the seeded subsample of one dataset."""

from diffguard.list_stages import select_images_stage
from diffguard.logs import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
select_images_stage(
    sm.input.imglist, sm.output[0], sm.params.spec, sm.params.seed, sm.params.num_classes
)
