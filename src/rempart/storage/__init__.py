"""Storage backends: a small create-only protocol (save/load/stat/list/remove) and wrappers.

May import only rempart.core.
"""
