"""The ``densemtl`` command: a thin layer over the library with friendly errors."""
