"""What every dashboard page reads: the server's parts and the two guards a route depends on.

Its own module so the package (which builds the router) and the page modules (which add their routes
to it) both import it, and neither imports the other back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.serving.config import ServeConfig
from tunelab.serving.dashboard.sessions import Sessions
from tunelab.serving.engine import Engine
from tunelab.serving.models import ModelPool
from tunelab.serving.store import Store
from tunelab.serving.supervisor import Supervisor


@dataclass
class Dashboard:
    """What the pages read, and the two guards: `view` (a session) and `post` (a session + CSRF)."""

    config: ServeConfig
    store: Store
    supervisor: Supervisor
    pool: ModelPool
    engine: Engine
    sessions: Sessions
    view: Any
    post: Any
