"""Build shim: the metadata is in setup.cfg (`scripts/setup.sh` installs it editable)."""

from setuptools import setup

setup()
