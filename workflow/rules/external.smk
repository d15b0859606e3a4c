"""Downloads (checkpoints, OpenOOD lists and images), manual steps, verification, extraction,
the torch-hub folder of the perceptual metrics and the OpenOOD benchmark layout."""

from pathlib import Path

from diffguard.plan import run_plan

P = run_plan(config, workflow)


rule download:
    output:
        "data/external/downloads/{key}/{filename}",
    log:
        "data/logs/download/{key}/{filename}.log",
    wildcard_constraints:
        key=P.download_keys_re("fetch"),
    retries: 2
    localrule: True  # compute nodes often have no internet access
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["downloads"][wildcards.key],
        checksum_dir=config["checksum_dir"],
    script:
        "../scripts/download.py"


rule link_manual_file:
    output:
        "data/external/downloads/{key}/{filename}",
    log:
        "data/logs/download/{key}/{filename}.log",
    wildcard_constraints:
        key=P.download_keys_re("manual_file"),
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["downloads"][wildcards.key],
        checksum_dir=config["checksum_dir"],
    script:
        "../scripts/download.py"


rule link_manual_folder:
    output:
        directory("data/external/downloads/{key}/{filename}"),
    log:
        "data/logs/download/{key}/{filename}.log",
    wildcard_constraints:
        key=P.download_keys_re("manual_folder"),
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["downloads"][wildcards.key],
        checksum_dir=config["checksum_dir"],
    script:
        "../scripts/download.py"


# Re-hash a file before anything uses it: a file changed after its download stops the run.
rule verify_download:
    input:
        lambda wildcards: P.download_file(wildcards.key),
    output:
        "data/external/verified/{key}.sha256",
    log:
        "data/logs/verify_download/{key}.log",
    wildcard_constraints:
        key=P.download_keys_re("hashed"),
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["downloads"][wildcards.key],
        checksum_dir=config["checksum_dir"],
    script:
        "../scripts/verify_download.py"


rule extract_download:
    input:
        archive=lambda wildcards: P.download_file(wildcards.key),
        verified=lambda wildcards: P.verified_stamp(wildcards.key),
    output:
        directory("data/external/extracted/{key}"),
    log:
        "data/logs/extract_download/{key}.log",
    wildcard_constraints:
        key=P.download_keys_re("archive"),
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    script:
        "../scripts/extract_download.py"


# The torch.hub folder piq reads DISTS/LPIPS weights from (no download at run time).
rule torch_hub:
    input:
        files=[P.download_file(key) for key in P.hub_files.values()],
        verified=[P.verified_stamp(key) for key in P.hub_files.values()],
    output:
        P.hub_weights(),
    log:
        "data/logs/torch_hub.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        names=list(P.hub_files),
        hub_dir=lambda wildcards, output: str(Path(output[0]).parent.parent),
    script:
        "../scripts/link_torch_hub.py"


if config["benchmark"]["kind"] == "openood":

    # OpenOOD lists + mounted image folders -> the run's benchmark folder (one image root).
    rule assemble_openood_benchmark:
        input:
            imglists=P.extracted_dir(P.openood["imglists"]),
            mounts=[P.downloaded(P.mount_key(spec)) for spec in P.openood["mounts"].values()],
            code=P.script_code("assemble_openood.py"),
        output:
            summary=f"data/external/{P.run}/benchmark/benchmark.json",
            lists=expand(
                "data/external/{run}/benchmark/imglists/{name}.txt",
                run=P.run,
                name=sorted({v["list"] for v in config["datasets"].values()}),
            ),
        log:
            f"data/logs/assemble_openood_benchmark/{P.run}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            lists={v["list"]: P.openood["lists"][v["list"]] for v in config["datasets"].values()},
            mounts={mount: P.mount_path(spec) for mount, spec in P.openood["mounts"].items()},
        script:
            "../scripts/assemble_openood.py"
