"""Scripts that measure the runner against its targets, side by side in one run:
`python -m benchmarks.<name> --help`."""
