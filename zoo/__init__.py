"""The zoo: readable PyTorch implementations of the family's landmark models.

`REGISTRY` maps a model name (the `zoo:` key of catalog entries) to "module:Class"; modules are
imported only when a model is built, so `import zoo` stays light.
"""

REGISTRY: dict[str, str] = {}
