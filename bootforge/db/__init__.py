"""Persistence: SQLAlchemy tables, the engine, Alembic migrations and queries. No rules live here."""
