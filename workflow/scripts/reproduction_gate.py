"""Rule reproduction_gate: write the gate file when the check's status is in ``params.allow``,
fail naming the cells otherwise (the paper depends on the gate)."""

import logging

from diffguard.reproduction import gate
from diffguard.runtime import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
try:
    status = gate(sm.input[0], sm.output[0], allow=list(sm.params.allow))
except RuntimeError:
    logging.getLogger(__name__).exception("reproduction check not passed")
    raise
logging.getLogger(__name__).info("reproduction check status: %s", status)
