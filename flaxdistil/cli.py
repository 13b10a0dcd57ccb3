"""Shared bits of the command-line scripts."""

from __future__ import annotations

import contextlib
import os
import sys

from absl import logging


@contextlib.contextmanager
def user_errors():
    """A mistake a user can make ends with one clear line, not a traceback (FLAXDISTIL_DEBUG=1
    shows the traceback)."""
    from flaxdistil.hf import CheckpointError
    from flaxdistil.logger import NonFiniteLoss

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        yield
    except (FileNotFoundError, CheckpointError, NonFiniteLoss, ValueError) as e:
        if os.environ.get("FLAXDISTIL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
