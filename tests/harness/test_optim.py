"""harness.optim.adamw: the fused AdamW takes the same steps as PyTorch's default one."""

import torch

from harness.models import build_variant
from harness.optim import adamw


def test_fused_adamw_takes_the_default_steps():
    """Five steps on a tiny GPT with weight decay and two parameter groups: every parameter
    within 1e-6 of the unfused optimizer's (float32 rounding of the same update). Except the
    keys' biases: their exact gradient is zero (a bias on every key shifts all of a query's
    scores alike), so what they get is rounding noise, which Adam scales up to steps of the
    learning rate in either direction."""
    torch.manual_seed(0)  # the weights, whatever ran before (some draws amplify the noise more)
    models = [build_variant("gpt", "tiny", vocab_size=64, max_seq_len=16) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = []
    for model, make in zip(models, (adamw, torch.optim.AdamW), strict=True):
        matrices = [p for p in model.parameters() if p.dim() >= 2]
        vectors = [p for p in model.parameters() if p.dim() < 2]
        optimizers.append(make([{"params": matrices, "weight_decay": 0.1},
                                {"params": vectors, "weight_decay": 0.0}], lr=1e-2,
                               betas=(0.9, 0.95)))
    assert optimizers[0].defaults["fused"] and not optimizers[1].defaults["fused"]
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for model, optimizer in zip(models, optimizers, strict=True):
            model.eval()  # no dropout: the same gradients
            optimizer.zero_grad()
            model(ids, targets=ids).loss.backward()
            optimizer.step()
    compared = 0
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        if not name.endswith("k_proj.bias"):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
            compared += 1
    assert compared > 10


def test_a_generator_of_parameters_is_not_spent_by_a_refused_attempt():
    model = torch.nn.Linear(3, 2)
    optimizer = adamw((p for p in model.parameters()), lr=1e-3)
    assert len(optimizer.param_groups[0]["params"]) == 2
