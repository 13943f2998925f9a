"""Django management commands of sagas.contrib.django."""
