"""Fails while it is imported."""

VALUE = {}["not here"]
