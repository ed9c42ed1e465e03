"""The REST API (`/v1`): FastAPI app factory, routers, auth and response schemas."""

from synthgen.service.api.app import create_app

__all__ = ["create_app"]
