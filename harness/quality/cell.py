"""`python -m harness.quality.cell ORDER`: one cell of a quality grid, in its own process (see
harness.quality.grid)."""

import sys

from harness.quality.grid import cell_main

if __name__ == "__main__":
    sys.exit(cell_main(sys.argv[1:]))
