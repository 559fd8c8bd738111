"""One module per schema revision; Alembic loads them by path, never as a package."""
