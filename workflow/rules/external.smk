"""Downloads (checkpoints, OpenOOD lists and images), manual steps, verification, extraction,
the torch-hub folder of the perceptual metrics and the OpenOOD benchmark layout."""


rule download:
    output:
        "data/external/downloads/{key}/{filename}",
    log:
        "data/logs/download/{key}/{filename}.log",
    wildcard_constraints:
        key=FETCH_KEYS_RE,
    retries: 2
    localrule: True  # compute nodes often have no internet access
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["downloads"][wildcards.key],
        checksum_dir=CHECKSUM_DIR,
    script:
        "../scripts/download.py"


rule link_manual_file:
    output:
        "data/external/downloads/{key}/{filename}",
    log:
        "data/logs/download/{key}/{filename}.log",
    wildcard_constraints:
        key=MANUAL_FILE_KEYS_RE,
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["downloads"][wildcards.key],
        checksum_dir=CHECKSUM_DIR,
    script:
        "../scripts/download.py"


rule link_manual_folder:
    output:
        directory("data/external/downloads/{key}/{filename}"),
    log:
        "data/logs/download/{key}/{filename}.log",
    wildcard_constraints:
        key=MANUAL_FOLDER_KEYS_RE,
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["downloads"][wildcards.key],
        checksum_dir=CHECKSUM_DIR,
    script:
        "../scripts/download.py"


# Re-hash a file before anything uses it: a file changed after its download stops the run.
rule verify_download:
    input:
        lambda wildcards: download_file(wildcards.key),
    output:
        "data/external/verified/{key}.sha256",
    log:
        "data/logs/verify_download/{key}.log",
    wildcard_constraints:
        key=HASHED_KEYS_RE,
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        spec=lambda wildcards: config["downloads"][wildcards.key],
        checksum_dir=CHECKSUM_DIR,
    script:
        "../scripts/verify_download.py"


rule extract_download:
    input:
        archive=lambda wildcards: download_file(wildcards.key),
        verified=lambda wildcards: verified_stamp(wildcards.key),
    output:
        directory("data/external/extracted/{key}"),
    log:
        "data/logs/extract_download/{key}.log",
    wildcard_constraints:
        key=ARCHIVE_KEYS_RE,
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    script:
        "../scripts/extract_download.py"


# The torch.hub folder piq reads DISTS/LPIPS weights from (no download at run time).
rule torch_hub:
    input:
        files=[download_file(key) for key in HUB_FILES.values()],
        verified=[verified_stamp(key) for key in HUB_KEYS],
    output:
        [f"{TORCH_HUB_DIR}/checkpoints/{name}" for name in HUB_FILES],
    log:
        "data/logs/torch_hub.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        names=list(HUB_FILES),
        hub_dir=lambda wildcards, output: str(Path(output[0]).parent.parent),
    script:
        "../scripts/link_torch_hub.py"


if BENCHMARK_KIND == "openood":

    # OpenOOD lists + mounted image folders -> the run's benchmark folder (one image root).
    rule assemble_openood_benchmark:
        input:
            imglists=extracted_dir(OPENOOD["imglists"]),
            mounts=[mount_source(spec) for spec in OPENOOD["mounts"].values()],
            code=script_code("assemble_openood.py"),
        output:
            summary=f"data/external/{RUN}/benchmark/benchmark.json",
            lists=expand(
                "data/external/{run}/benchmark/imglists/{name}.txt",
                run=RUN,
                name=sorted({v["list"] for v in config["datasets"].values()}),
            ),
        log:
            f"data/logs/assemble_openood_benchmark/{RUN}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            lists={v["list"]: OPENOOD["lists"][v["list"]] for v in config["datasets"].values()},
            mounts={mount: mount_path(spec) for mount, spec in OPENOOD["mounts"].items()},
        script:
            "../scripts/assemble_openood.py"
