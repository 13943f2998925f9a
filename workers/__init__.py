"""The example deployment: a Celery app and the services of the order-fulfillment saga."""
