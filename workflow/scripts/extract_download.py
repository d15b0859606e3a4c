"""Rule extract_download: safe, atomic extraction of a verified zip/tar archive."""

from diffguard.downloads import extract_archive, setup_file_logging

sm = snakemake  # noqa: F821
setup_file_logging(sm.log[0])
extract_archive(sm.input.archive, sm.output[0])
