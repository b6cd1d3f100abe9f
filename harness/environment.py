"""Environment variables set for a block of code only: some libraries read their switches from
the environment (lm-eval's `datasets` and tqdm, the rwkv package), and library code must not
change the process's environment for good."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager


@contextmanager
def environment_defaults(values: Mapping[str, str],
                         environ: MutableMapping[str, str] | None = None, *,
                         override: bool = False) -> Iterator[None]:
    """Inside the block, each variable of `values` that `environ` (default: os.environ) lacks
    has the given value; one already set keeps its own, as the user chose it (unless
    `override`: then every one has the given value). On leaving, however the block ends, every
    one of those variables is back as it was."""
    environ = os.environ if environ is None else environ
    previous = {name: environ.get(name) for name in values}
    for name, value in values.items():
        if override:
            environ[name] = value
        else:
            environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
