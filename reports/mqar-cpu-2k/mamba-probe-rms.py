"""AD-HOC probe: RMS of each Mamba block's output at init, MQAR tiny at width 64, 32 random seqs."""
import os, torch
from harness.models import build
torch.manual_seed(0)
b = build("mamba", "tiny", overrides={"vocab_size": 512, "d_model": 64}, seed=0)
m = b.model
print(os.environ.get("MAMBA_PROBE"), {k: v for k, v in b.fields.items()})
ids = torch.randint(0, 512, (32, 64))
outs = []
hooks = [blk.mixer.register_forward_hook(lambda mod, inp, out: outs.append(out[0])) for blk in m.layers]
with torch.no_grad():
    emb = m.embedding(ids)
    m(ids)
print("embedding rms %.4f" % emb.pow(2).mean().sqrt(), "block outputs rms", ["%.4f" % o.pow(2).mean().sqrt() for o in outs])
