"""Rule reproduction_gate: write the gate file when the check's status is in ``params.allow``,
fail naming the cells otherwise (the paper depends on the gate)."""

from diffguard.logs import setup_logging
from diffguard.reproduction import reproduction_gate_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
reproduction_gate_stage(sm.input[0], sm.output[0], allow=list(sm.params.allow))
