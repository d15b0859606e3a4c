"""Rule prepare_diffusion_model: convert a released checkpoint once (safetensors + backend.json)."""

from pathlib import Path

from diffguard.io import sha256sum, write_text
from diffguard.preparation import prepare_diffusion_model
from diffguard.runtime import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
out_dir = Path(sm.params.out_dir)
prepare_diffusion_model(
    sm.params.source,
    {role: Path(path) for role, path in zip(sm.params.roles, sm.input.checkpoints, strict=True)},
    dict(sm.params.options),
    out_dir,
)
# the LDM keeps its UNet and VQ in subfolders of weights/
weights = sorted((out_dir / "weights").rglob("*.safetensors"))
if not weights or not (out_dir / "backend.json").is_file():
    raise RuntimeError(f"{out_dir}: conversion wrote no weights/**/*.safetensors or backend.json")
lines = [f"{sha256sum(p)}  {p.relative_to(out_dir)}" for p in weights]
write_text(sm.output.done, f"converted from {sm.params.source}\n" + "\n".join(lines) + "\n")
