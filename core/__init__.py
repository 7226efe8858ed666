"""The project's core: configuration, the warehouse connection and its lock, storage paths.

Imports run one way (DESIGN §10): core ← lake ← loaders and spark_jobs ← orchestration.
"""
