"""Global wildcard constraints (no rules here). The config is validated, and everything the
rule files share is derived, by diffguard.plan.run_plan."""

from diffguard.plan import alternatives, run_plan

P = run_plan(config, workflow)


wildcard_constraints:
    exp=alternatives(P.experiments),
    dataset=alternatives(P.all_sets),
    seed=r"\d+",
    shard=r"\d{3}",
    model=alternatives(P.diffusion_models),
