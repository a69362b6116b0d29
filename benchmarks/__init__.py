"""Development tools beside the library: `make bench` and the network table.

Run from the repository root: ``python -m benchmarks.bench`` (what `make bench` runs),
``python benchmarks/networks.py``, ``python -m benchmarks.label_efficiency``. These modules
import `semimed`; `semimed` never imports them.
"""
