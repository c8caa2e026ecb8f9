"""Repositories: one module per aggregate, SQLAlchemy Core queries run through `databases`."""
