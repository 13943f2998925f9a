"""Applying and checking the Alembic migrations (``saga db upgrade``).

The saga tables keep their revision in their own version table, ``sagas_alembic_version``, not
in Alembic's default ``alembic_version``: a project with its own Alembic migrations in the same
database (Flask-Migrate, a plain ``alembic.ini``) keeps ``alembic_version`` to itself, and the
two histories never meet. Stores migrated before that (their revision in ``alembic_version``)
are moved over by ``upgrade`` the first time it runs.

A project that autogenerates its own migrations against that database tells Alembic to leave
the saga tables alone with ``include_object``::

    from sagas.store.migrate import include_object

    context.configure(connection=..., target_metadata=..., include_object=include_object)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Constraint, Engine, MetaData, String, Table, inspect
from sqlalchemy.schema import SchemaItem

from ..settings import Settings
from .receipts import receipt_table
from .schema import Base, saga_table

MIGRATIONS = Path(__file__).parent / "migrations"

VERSION_TABLE = "sagas_alembic_version"
"""Where the saga migrations record their revision."""
DEFAULT_VERSION_TABLE = "alembic_version"
"""Alembic's default version table: the saga revision's home before ``VERSION_TABLE``."""
VERSION_TABLE_SCHEMA = "version_table_schema"
"""``Config.attributes`` key through which ``upgrade`` hands the schema to ``env.py``."""
ON_VERSION_APPLY = "on_version_apply"
"""``Config.attributes`` key through which ``upgrade`` hands Alembic a per-step callback."""

SAGA_TABLES = frozenset(Base.metadata.tables)
"""The tables the saga migrations own."""


def alembic_config(url: str | None = None, *, settings: Settings | None = None) -> Config:
    """The saga migrations' Alembic config. With ``settings``, its ``database_schema`` is the
    version table's schema; without, ``env.py`` reads ``SAGAS_DATABASE_SCHEMA``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if settings is not None:
        cfg.attributes[VERSION_TABLE_SCHEMA] = settings.database_schema
    return cfg


@dataclass(frozen=True, slots=True)
class MigrationStep:
    """One migration: its revision id (``0008``) and its name (``trace_context``)."""

    revision: str
    name: str


def upgrade(
    engine: Engine,
    revision: str = "head",
    settings: Settings | None = None,
    *,
    on_step: Callable[[MigrationStep], None] | None = None,
) -> None:
    """Migrate the saga tables to ``revision``, in one transaction.

    A store whose revision is still in ``alembic_version`` (migrated before the saga tables had
    their own version table) has it moved to ``sagas_alembic_version`` first, in the same
    transaction. ``settings`` (default: read from the environment) gives the version table's
    schema. ``on_step`` is called after each migration has run (before the commit, which comes
    after the last)."""
    settings = settings or Settings()
    cfg = alembic_config(settings=settings)
    if on_step is not None:
        steps = {s.revision: s for s in all_steps()}

        def applied(**kw: Any) -> None:  # Alembic's on_version_apply callback
            for rev in kw["step"].up_revision_ids:
                on_step(steps.get(rev) or MigrationStep(rev, rev))

        cfg.attributes[ON_VERSION_APPLY] = applied
    with engine.begin() as conn:
        _adopt_default_version_table(conn, settings.database_schema)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def all_steps() -> list[MigrationStep]:
    """Every saga migration, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [_step(sc) for sc in reversed(list(script.walk_revisions()))]


def pending_steps(
    engine: Engine, revision: str = "head", settings: Settings | None = None
) -> list[MigrationStep]:
    """The migrations ``upgrade(engine, revision)`` would run, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    schema = (settings or Settings()).database_schema
    with engine.connect() as conn:
        current = _context(conn, schema).get_current_revision()
        if current is None:  # maybe still in alembic_version: upgrade moves it over first
            current = next(iter(_legacy_revisions(conn, schema, script)), None)
    found = script.iterate_revisions(revision, current or "base")
    return [_step(sc) for sc in reversed(list(found)) if sc is not None]


def _step(sc: Any) -> MigrationStep:
    stem = Path(sc.path).stem  # 0008_trace_context
    prefix = f"{sc.revision}_"
    return MigrationStep(
        sc.revision, stem.removeprefix(prefix) if stem.startswith(prefix) else stem
    )


def current_revision(engine: Engine, settings: Settings | None = None) -> str | None:
    """The saga tables' revision (from ``sagas_alembic_version``); None before ``upgrade``."""
    schema = (settings or Settings()).database_schema
    with engine.connect() as conn:
        rev: str | None = _context(conn, schema).get_current_revision()
        return rev


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def include_object(
    object: SchemaItem,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: SchemaItem | None,
) -> bool:
    """An Alembic ``include_object`` hook for a project's own migrations in a database that
    also holds the saga store: False for the saga tables (``saga``, ``saga_step``,
    ``saga_event``, ``saga_handled``, ``saga_orphan_event``), their columns, indexes and
    constraints, and for ``sagas_alembic_version``, so the project's autogenerate neither drops
    nor alters them (the saga migrations own them); True for everything else.

    ``saga_receipt`` (``sagas.receipts``) is the project's own table: it is left out only when
    it exists in the database but not in the project's metadata (made by
    ``Receipts.create_table()``), so autogenerate does not drop it; a project that put
    ``sagas.receipts.metadata`` in its target gets it created and compared as usual.

    Tables are matched by name, in any schema. Use it in the project's ``env.py``::

        context.configure(..., include_object=include_object)
    """
    del name  # the table's name is read from the object, for columns and indexes as well
    owner = object if isinstance(object, Table) else _owning_table(object)
    if owner is None:
        return True
    if owner.name in SAGA_TABLES or owner.name == VERSION_TABLE:
        return False
    if owner.name == receipt_table.name and type_ == "table":
        return not (reflected and compare_to is None)
    return True


def _owning_table(item: SchemaItem) -> Table | None:
    owner = getattr(item, "parent" if isinstance(item, Constraint) else "table", None)
    return owner if isinstance(owner, Table) else None


def _context(conn: Connection, schema: str | None) -> MigrationContext:
    return MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )


_LEGACY = Table(
    DEFAULT_VERSION_TABLE, MetaData(), Column("version_num", String(32), nullable=False)
)


def _legacy_revisions(conn: Connection, schema: str | None, script: ScriptDirectory) -> list[str]:
    """Saga revisions still in ``alembic_version`` (none once ``sagas_alembic_version`` exists,
    or without the saga tables: then a revision id such as ``0001`` cannot be ours)."""
    inspector = inspect(conn)
    if inspector.has_table(VERSION_TABLE, schema=schema):
        return []
    if not inspector.has_table(DEFAULT_VERSION_TABLE):
        return []
    if not inspector.has_table(saga_table.name, schema=saga_table.schema):
        return []
    ours = {sc.revision for sc in script.walk_revisions()}
    return [rev for rev in conn.execute(_LEGACY.select()).scalars() if rev in ours]


def _adopt_default_version_table(conn: Connection, schema: str | None) -> None:
    """Move the saga revision from ``alembic_version`` to ``sagas_alembic_version``.

    Only when the new table does not exist yet, the saga tables do (so a revision id such as
    ``0001`` can be ours at all) and ``alembic_version`` holds a revision of the saga migration
    tree. Only that row moves: another project's revision is never touched, and
    ``alembic_version`` is dropped only when nothing but the saga revision was in it."""
    script = ScriptDirectory.from_config(alembic_config())
    moving = _legacy_revisions(conn, schema, script)
    if not moving:
        return
    found = list(conn.execute(_LEGACY.select()).scalars())
    context = _context(conn, schema)
    for rev in moving:
        context.stamp(script, rev)
    conn.execute(_LEGACY.delete().where(_LEGACY.c.version_num.in_(moving)))
    if len(moving) == len(found):
        _LEGACY.drop(conn)
