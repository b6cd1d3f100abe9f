"""One RWKV-6 or RWKV-7 training step (small, batch 1, fp32, AdamW) with the time mix's low-rank
projections as zoo.fast.linear's products (the route's _LinearLoRA, the default) and as
PyTorch's `@` (the model file's), alternated in one process: six rounds of two steps each way
after two warm-up steps; the median and fastest time per step.

    python reports/train-cpu/lora-probe.py MODEL SEQLEN
"""

import sys

from probes import alternate_steps

import zoo.fast
from zoo import rwkv6, rwkv7

PLAIN = {"rwkv6": (zoo.fast.CompiledWKV6TimeMix, rwkv6.TimeMix.lora),
         "rwkv7": (zoo.fast.CompiledWKV7TimeMix, rwkv7.TimeMix.lora)}


def main(name: str, seqlen: int) -> None:
    routed, plain_lora = PLAIN[name]
    routed_lora = routed.lora
    alternate_steps(name, seqlen, {
        "linear's products": lambda: setattr(routed, "lora", routed_lora),
        "PyTorch's @": lambda: setattr(routed, "lora", plain_lora)})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
