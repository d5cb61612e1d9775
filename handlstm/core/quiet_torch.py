"""Import torch without its "Failed to initialize NumPy" warning, and nothing more.

torch warns at import time when numpy is missing; handlstm never converts to or from numpy
(its only runtime dependency is torch), so in a torch-only environment that warning was noise
on every ``handlstm`` command. Only that message, only during this import, and only when
handlstm is what first imports torch: afterwards the warning filters are as they were.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    import torch  # noqa: F401
