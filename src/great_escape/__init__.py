"""great-escape: trigger-based change capture and row-state sync for PostgreSQL migrations."""

__version__ = "0.1.0"
