"""Shared test setup: a private kernel cache, so the suite never depends on what an earlier run compiled."""

import os
import tempfile

# Set before optimlab is imported anywhere: every pytest process (and xdist worker) compiles its own kernels.
os.environ.setdefault("OPTIMLAB_CACHE_DIR", tempfile.mkdtemp(prefix="optimlab-kernels-"))
# Triton kernels run in Triton's interpreter on CPU tensors (there is no GPU in CI). Set before anything
# imports triton (torch.compile's inductor does): triton.language binds its own @jit helpers (tl.sum)
# to the mode at import time.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def float64_default():
    """torch keeps scalar state (step, NAdam's μ product) in the default dtype: make it float64 for parity."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
