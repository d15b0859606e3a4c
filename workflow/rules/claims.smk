"""The paper's qualitative claims (a)-(e) checked on the run's test scores (config `claims:`)."""

from diffguard.plan import run_plan
from diffguard.targets import TABLE

P = run_plan(config, workflow)


if P.claims:

    rule check_claims:
        """Claims table from the test-split per-image scores (and a tune's chosen.json)."""
        input:
            scores=P.claims_inputs()["scores"],
            baselines=P.claims_inputs()["baselines"],
            chosen=P.claims_inputs()["chosen"],
            code=P.script_code("check_claims.py"),
        output:
            csv=report(
                P.claims_tables()["csv"],
                caption=TABLE["claims"].caption_file,
                category="Claims",
            ),
            md=P.claims_tables()["md"],
            tex=P.claims_tables()["tex"],
        log:
            f"data/logs/check_claims/{P.run}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            section=P.claims,
            id_set=P.id_set,
            ood_sets=P.claim_sets,
            run=P.run,
        script:
            "../scripts/check_claims.py"
