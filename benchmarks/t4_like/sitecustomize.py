"""Makes a larger CUDA GPU look like Colab's T4 to every Python process started with this
folder on PYTHONPATH (the notebook's kernel and each `meshtune` it runs): no bfloat16, so
training and evaluation take the fp16 path a T4 takes, and T4_GIB (default 15) of memory, the
T4's usable 15 GiB, as a per-process cap. Used by benchmarks/gpu_guide.py; not part of meshtune.
"""

import os

import torch

if torch.cuda.is_available():
    torch.cuda.is_bf16_supported = lambda *args, **kwargs: False
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(float(os.environ.get("T4_GIB", 15)) * 2**30 / total)
