"""Image sets: build (embedded) or assemble (OpenOOD, external.smk) them, then fix the seeded
subsamples."""

if BENCHMARK_KIND == "embedded":

    rule build_embedded_benchmark:
        input:
            code=script_code("build_embedded_benchmark.py"),
        output:
            summary=f"data/external/{RUN}/benchmark/benchmark.json",
            lists=expand(
                "data/external/{run}/benchmark/imglists/{name}.txt",
                run=RUN,
                name=sorted({v["list"] for v in config["datasets"].values()}),
            ),
        log:
            f"data/logs/build_embedded_benchmark/{RUN}.log",
        conda:
            "../../envs/diffguard.yaml"
        params:
            benchmark=config["benchmark"],
        script:
            "../scripts/build_embedded_benchmark.py"


# A checkpoint: with `n: null` (the full list) the number of reconstruction shards is known only
# once the list exists; with `n` set it is known up front and the DAG is static.
checkpoint select_images:
    input:
        imglist=benchmark_list,
        code=script_code("select_images.py"),
    output:
        f"data/interim/{RUN}/lists/{{dataset}}.txt",
    log:
        f"data/logs/select_images/{RUN}/{{dataset}}.log",
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=dataset_spec,
        seed=config["benchmark"].get("seed", 0),
        num_classes=config["benchmark"]["num_classes"],
    script:
        "../scripts/select_images.py"
