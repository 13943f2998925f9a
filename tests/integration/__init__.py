"""Integration tier: real ``celery worker`` processes, PostgreSQL, Redis and RabbitMQ."""
