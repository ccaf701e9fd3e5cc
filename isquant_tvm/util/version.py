"""The package version, at the bottom of the import layers so every layer can report it."""

__version__ = "0.1.0"
