"""drainage-bench: benchmark sweeps of robust losses under label noise."""

__version__ = "0.2.0"
