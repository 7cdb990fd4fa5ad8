"""Shared test setup: a private kernel cache, so the suite never depends on what an earlier run compiled."""

import os
import tempfile

# Set before optimlab is imported anywhere: every pytest process (and xdist worker) compiles its own kernels.
os.environ.setdefault("OPTIMLAB_CACHE_DIR", tempfile.mkdtemp(prefix="optimlab-kernels-"))
