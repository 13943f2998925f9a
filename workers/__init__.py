"""The example deployment: the Celery app (``workers.app``), the server-mode demo and the
Procfile topology of the services in ``sagas.examples``. Not installed with the package."""
