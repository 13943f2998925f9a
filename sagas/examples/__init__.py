"""The example shop that ``saga demo`` runs and users copy: an order-fulfillment saga
(``order_fulfillment``, orchestrated) and its event-driven twin (``order_choreography``) over
four services (``inventory``, ``payment``, ``shipping``, ``notification``), each with its own
database (``models``). ``demo`` runs them embedded, with no servers.

The repository's ``workers/`` is the deployment of these services (Celery app, Procfile).
"""
