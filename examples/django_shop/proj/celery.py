import os

from celery import Celery

import sagas
import sagas.contrib.django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
sagas.install(app, settings=sagas.contrib.django.settings())
