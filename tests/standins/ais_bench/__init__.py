"""Stand-in for the ais_bench package (Ascend tools), for tests where no NPU exists."""

__version__ = "0.0.2-standin"
