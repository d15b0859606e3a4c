"""Rules download / link_manual_*: fetch (resumable, verified) or link a user-provided input."""

from pathlib import Path

from diffguard.downloads import fetch, link_manual, parse_spec, setup_file_logging

sm = snakemake  # noqa: F821
setup_file_logging(sm.log[0])
spec = parse_spec(sm.wildcards.key, sm.params.spec)
if spec.filename != sm.wildcards.filename:
    raise ValueError(
        f"downloads.{spec.key}.filename is {spec.filename!r}, but {sm.output[0]} was requested"
    )
if spec.manual:
    link_manual(spec, Path(sm.output[0]), sm.params.checksum_dir)
else:
    fetch(spec, Path(sm.output[0]), sm.params.checksum_dir)
