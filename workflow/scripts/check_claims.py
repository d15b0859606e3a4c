"""Rule check_claims: the paper's claims (a)-(e) on the run's test scores."""

from diffguard.claims import check_claims_stage
from diffguard.logs import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
check_claims_stage(
    score_files=sm.input.scores,
    baseline_files=sm.input.baselines,
    section=dict(sm.params.section),
    chosen_file=sm.input.chosen[0] if sm.input.chosen else None,
    id_set=sm.params.id_set,
    ood_sets=list(sm.params.ood_sets),
    run=sm.params.run,
    outputs={"csv": sm.output.csv, "md": sm.output.md, "tex": sm.output.tex},
)
