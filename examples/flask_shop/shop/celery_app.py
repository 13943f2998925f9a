"""What ``celery -A shop.celery_app`` loads."""

from shop import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
