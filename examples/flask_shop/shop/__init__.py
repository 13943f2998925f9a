"""The shop: an app factory with Flask-SQLAlchemy, Flask's ``celery_init_app`` and ``Sagas``.

Configured from the environment, with defaults that need no server:

- ``SHOP_DATABASE_URL``: the shop's database, and the saga store's (default
  ``sqlite:///shop.db``, i.e. ``instance/shop.db``);
- ``CELERY_BROKER_URL``: the broker (default ``filesystem://``, messages as files under
  ``SHOP_BROKER_DIR``, default ``instance/broker``); e.g. ``redis://localhost:6379/0``;
- any saga setting as ``SAGAS_<NAME>`` (``SAGAS_COORDINATOR_QUEUE``, ``SAGAS_SWEEP_INTERVAL``,
  ...), which sagas reads from the environment itself.
"""

import os

from celery import Celery, Task
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

from sagas.contrib.flask import Sagas


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def celery_init_app(app: Flask) -> Celery:
    """Flask's "Background Tasks with Celery" pattern, as its docs write it."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def _celery_config(app: Flask) -> dict[str, object]:
    broker_url = os.environ.get("CELERY_BROKER_URL", "filesystem://")
    config: dict[str, object] = {
        "broker_url": broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
    }
    if broker_url.startswith("filesystem://"):
        # kombu's filesystem transport: one folder shared by the web app and the worker.
        folder = os.environ.get("SHOP_BROKER_DIR") or os.path.join(app.instance_path, "broker")
        os.makedirs(folder, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "store_processed": False,
            "polling_interval": 0.1,
        }
    return config


def create_app() -> Flask:
    app = Flask(__name__)
    database_url = os.environ.get("SHOP_DATABASE_URL", "sqlite:///shop.db")
    app.config.from_mapping(
        SQLALCHEMY_DATABASE_URI=database_url,  # a relative SQLite path: the instance folder
        CELERY=_celery_config(app),
    )
    if database_url.startswith("sqlite"):
        # The web app and the worker write the same file: wait for the lock, do not fail.
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"timeout": 30}}
    db.init_app(app)
    celery_app = celery_init_app(app)
    Sagas(app, celery=celery_app, modules=["shop.sagas"])

    from . import models, views  # noqa: F401  (models: the tables create_all makes)

    app.register_blueprint(views.bp)
    with app.app_context():
        db.create_all()
    return app
