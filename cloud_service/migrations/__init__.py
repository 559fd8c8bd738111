"""Alembic migrations of the cloud database (see :mod:`edgecascade.cloud_service.schema`).

``env.py`` is what Alembic runs; ``versions/`` holds one module per revision, named
``v<revision>_<slug>.py`` with sequential revision ids (``0001``, ``0002``, …).
"""
