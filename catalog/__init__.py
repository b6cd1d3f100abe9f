"""Data package: one YAML file per model (see README.md). Nothing to import here."""
