"""Tables, figures, the paper PDF and the exploration notebook (CPU, local)."""

FIGURES = []
TABLE_FILES = []
