"""The C kernels of zoo.fast's routes, one module per kernel: its C source as a string, compiled
on first use with the system's C compiler and cached (ckernel.py), the ctypes calls, and an
autograd Function where the kernel has a backward. Each says `available()`: False where no
compiler built it, and the route then runs the plain PyTorch path. ckernel.py also splits a
kernel's work between PyTorch's threads (`split`), which every kernel's calls go through.

  wkv_cpu        RWKV-4's WKV, forward and backward
  wkv5_cpu       RWKV-5/6's matrix WKV (with GroupNorm and gate for inference), and backward
  wkv5_step_cpu  an RWKV-5/6 block's decoding step as one call
  wkv7_cpu       RWKV-7's generalised delta rule, forward and backward
  wkv7_step_cpu  an RWKV-7 block's decoding step as one call
  matvec_cpu     the few-row matrix-vector product, on helper threads that never wait
  scan_cpu       Mamba's selective scan, forward and backward
  ssd_cpu        Mamba-2's chunked SSD: inside chunks in C, the state's products in oneDNN
  conv_cpu       Mamba's and Mamba-2's causal depthwise convolution with its SiLU
  norm_cpu       Mamba-2's gated RMSNorm
  dropout_cpu    dropout masks from a counter-based hash
  attention_cpu  attention with dropout, a head at a time, softmax and dropout in C
"""
