"""The durable job store: SQLAlchemy models, migrations, and the few queries the service makes."""

from synthgen.service.store.db import connect, migrate
from synthgen.service.store.jobs import JobStore

__all__ = ["JobStore", "connect", "migrate"]
