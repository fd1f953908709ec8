"""Session-wide test setup."""
import os

import torch

if not torch.cuda.is_available():
    # Triton kernels run in Triton's interpreter on CPU-only machines; this must be set before anything
    # (vLLM included) imports triton, so it lives here rather than in tests/kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")
