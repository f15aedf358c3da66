"""Content-defined chunking (FastCDC, compiled ``pyfastcdc``), seeded from the id key.

May import only rempart.core.
"""
