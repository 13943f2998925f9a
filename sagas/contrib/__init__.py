"""Integrations with web frameworks (Django, Flask): each imports its framework only here."""
