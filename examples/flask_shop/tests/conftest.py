"""The shop under test: its own SQLite file per test, which is the saga store too (as in
production, where the saga store defaults to the app's database), and sagas' test runtime on
the shop's Celery app (in-process broker, fake clock, no servers)."""

import pytest
from shop import create_app, db


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOP_DATABASE_URL", f"sqlite:///{tmp_path / 'shop.db'}")
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
    return create_app()


@pytest.fixture
def sagas_celery_app(app):
    return app.extensions["celery"]


@pytest.fixture
def saga_settings(app):
    with app.app_context():
        return {"database_url": db.engine.url.render_as_string(hide_password=False)}


@pytest.fixture
def client(app):
    return app.test_client()
