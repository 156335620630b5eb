"""Datasets in the guides' layout and the preprocessing recipe."""
