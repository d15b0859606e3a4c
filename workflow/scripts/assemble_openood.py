"""Rule assemble_openood_benchmark: OpenOOD image lists and mounted folders under one root."""

from pathlib import Path

from diffguard.downloads import setup_file_logging
from diffguard.openood import assemble_openood

sm = snakemake  # noqa: F821
setup_file_logging(sm.log[0])
assemble_openood(
    imglist_root=sm.input.imglists,
    lists=dict(sm.params.lists),
    mounts=dict(sm.params.mounts),
    out_dir=Path(sm.output.summary).parent,
)
