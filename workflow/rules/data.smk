"""Image sets: build (embedded) or assemble (OpenOOD, external.smk) them, then fix the seeded
subsamples."""

from diffguard.plan import run_plan

P = run_plan(config, workflow)

if config["benchmark"]["kind"] in ("embedded", "mnist"):

    # embedded: built from files inside installed packages; mnist: from verified downloads.
    rule build_embedded_benchmark:
        input:
            code=P.script_code("build_embedded_benchmark.py"),
            sources=list(P.benchmark_sources.values()),
            verified=[P.verified_stamp(k) for k in P.benchmark_source_keys],
        output:
            summary=f"data/external/{P.run}/benchmark/benchmark.json",
            lists=expand(
                "data/external/{run}/benchmark/imglists/{name}.txt",
                run=P.run,
                name=sorted({v["list"] for v in config["datasets"].values()}),
            ),
        log:
            f"data/logs/build_embedded_benchmark/{P.run}.log",
        conda:
            "../../envs/diffguard.yaml"
        params:
            benchmark=config["benchmark"],
            lists=sorted({v["list"] for v in config["datasets"].values()}),
            sources=P.benchmark_sources,
        script:
            "../scripts/build_embedded_benchmark.py"


# A checkpoint: with `n: null` (the full list) the number of reconstruction shards is known only
# once the list exists; with `n` set it is known up front and the DAG is static.
checkpoint select_images:
    input:
        imglist=lambda wildcards: (
            f"data/external/{P.run}/benchmark/imglists/"
            f"{config['datasets'][wildcards.dataset]['list']}.txt"
        ),
        code=P.script_code("select_images.py"),
    output:
        f"data/interim/{P.run}/lists/{{dataset}}.txt",
    log:
        f"data/logs/select_images/{P.run}/{{dataset}}.log",
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["datasets"][wildcards.dataset],
        seed=config["benchmark"]["seed"],
        num_classes=config["benchmark"]["num_classes"],
    script:
        "../scripts/select_images.py"
