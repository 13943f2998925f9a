"""Alembic environment for the saga tables (PostgreSQL and SQLite share one tree).

The revision lives in its own version table, ``sagas_alembic_version`` (in the schema
``database_schema`` names, default the connection's), so a project's own Alembic migrations in
the same database keep ``alembic_version`` to themselves.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from sagas.settings import Settings
from sagas.store.engine import make_engine
from sagas.store.migrate import ON_VERSION_APPLY, VERSION_TABLE, VERSION_TABLE_SCHEMA
from sagas.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _version_table_schema() -> str | None:
    if VERSION_TABLE_SCHEMA in config.attributes:  # given by sagas.store.migrate.upgrade
        schema: str | None = config.attributes[VERSION_TABLE_SCHEMA]
        return schema
    return Settings().database_schema


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        version_table=VERSION_TABLE,
        version_table_schema=_version_table_schema(),
        # saga db upgrade's progress, one call per migration applied (None: no callback).
        on_version_apply=config.attributes.get(ON_VERSION_APPLY),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        url = Settings().database_url_sqlalchemy
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run `saga db upgrade`")
run_migrations_online()
