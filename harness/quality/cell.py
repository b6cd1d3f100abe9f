"""`python -m harness.quality.cell ORDER`: one cell of a quality grid, in its own process (see
harness.quality.grid)."""

import signal
import sys

from harness.quality.grid import cell_main

if __name__ == "__main__":
    # Ctrl-C reaches the cell too: it ends training after the step under way, saved (a rerun
    # resumes it), even where the grid's own process ignores SIGINT (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(cell_main(sys.argv[1:]))
