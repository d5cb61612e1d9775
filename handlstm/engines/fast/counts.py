"""How often each fast-path loop ran (for tests and benchmarks; not part of the public API)."""

from __future__ import annotations

from collections import Counter

#: How often each path ran, by name: "inference" and "train" (fast path, one count per direction
#: served), "lockstep" (calls that ran two directions together), "packed" (calls on packed input)
#: and "recompute" (a fast-path backward that fell back to the composed path for
#: ``create_graph=True``).
counts: Counter[str] = Counter()
