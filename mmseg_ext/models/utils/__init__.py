"""Helpers shared by the plugin's models that are not models themselves."""
