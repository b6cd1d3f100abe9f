"""The harness: the catalog, benchmarks, quality runs, results and reports."""
