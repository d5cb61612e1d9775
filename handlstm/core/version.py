"""The release of this handlstm (pyproject.toml says the same; a test keeps them equal)."""

__version__ = "0.2.0"
