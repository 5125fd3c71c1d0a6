"""Coefficients to weights: a particle becomes tensors in the one resident model.

`kernels` (the arithmetic: linear combinations accumulated as mergekit does), `writer` (planning and
writing a particle into its destinations), `destinations` (where each checkpoint tensor lands in a loaded
model, through transformers' and PEFT's own conversions), `adapter_stack` (adapter slots served in one
batched LoRA forward), `resident` (the resident model itself), `device_memory` (how many particles a
batch holds, on a GPU or a CPU).

May import `core`, `pso`, `utilities`, `hub`, `config` and `experts`.
"""
