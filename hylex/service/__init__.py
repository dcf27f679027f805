"""The standalone HTTP retrieval service (FastAPI + uvicorn): ``hylex serve DIR``."""
from hylex.service.app import create_app

__all__ = ["create_app"]
