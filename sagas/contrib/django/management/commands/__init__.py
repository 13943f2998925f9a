"""``manage.py saga``."""
