"""The web dashboard: `create_app(settings)` is an ASGI app to serve or mount."""

from unbroken.dashboard.app import create_app
from unbroken.dashboard.security import check_bind

__all__ = ["check_bind", "create_app"]
