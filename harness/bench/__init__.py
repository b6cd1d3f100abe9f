"""Benchmarks of speed and memory: one cell = (model, variant, implementation, mode, length,
batch, dtype, device), measured in a fresh process of its own (see `harness.sweep`).

  workload         the modes, a cell, the inputs every implementation of a cell is handed
                   (drawn once, in one place), and what one timed run is
  implementations  the registry of implementations: zoo, zoo-compiled, hf, rwkv-pip
  ours             the zoo's models, eager and under torch.compile
  hf               Hugging Face transformers, holding the zoo model's weights
  rwkv_pip         the official `rwkv` package (RWKV-4), holding the zoo model's weights
  memory           peak RSS and the memory held above the weights
  machine          what every record says about the machine, and its matmul peak (for MFU)
  cell             one cell measured in this process; `python -m harness.bench.cell` for sweeps
"""
