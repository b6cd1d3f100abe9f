"""Ad-hoc probe: the RMS each Mamba block writes into the residual stream at initialisation,
MQAR's tiny model at width 64 (vocabulary 512), on 32 random sequences of 64 tokens. Run from
the probe worktree (zoo/mamba.py edited as in mamba-probe.diff) with MAMBA_PROBE unset, `norm`
or `scale14`."""

import os

import torch

from harness.models import build

torch.manual_seed(0)
model = build("mamba", "tiny", overrides={"vocab_size": 512, "d_model": 64}, seed=0).model
ids = torch.randint(0, 512, (32, 64))
outputs = []
for block in model.layers:
    block.mixer.register_forward_hook(lambda module, args, out: outputs.append(out[0]))
with torch.no_grad():
    embedding_rms = model.embedding(ids).pow(2).mean().sqrt().item()
    model(ids)
rms = ", ".join(f"{out.pow(2).mean().sqrt().item():.4f}" for out in outputs)
print(f"MAMBA_PROBE={os.environ.get('MAMBA_PROBE')}: embedding {embedding_rms:.4f}, blocks {rms}")
