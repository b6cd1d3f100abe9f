"""`python -m harness.cli ...` runs the `catalog` command."""

from harness.cli import main

main()
