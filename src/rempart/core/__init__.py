"""Core value objects shared by every layer: ids, errors, clock, configuration values.

Imports nothing from the rest of rempart.
"""
