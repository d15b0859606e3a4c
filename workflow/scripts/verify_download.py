"""Rule verify_download: re-hash a downloaded file against its pinned or recorded sha256."""

from diffguard.downloads import parse_spec, setup_file_logging, verify_file
from diffguard.io import write_text

sm = snakemake  # noqa: F821
setup_file_logging(sm.log[0])
spec = parse_spec(sm.wildcards.key, sm.params.spec)
digest = verify_file(sm.input[0], spec, sm.params.checksum_dir)
write_text(sm.output[0], f"{digest}  {spec.filename}\n")
