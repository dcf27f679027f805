"""The standalone HTTP retrieval service (FastAPI + uvicorn): ``hylex serve DIR [--workers N]``."""
from hylex.service.app import create_app
from hylex.service.workers import ServeConfig, serve

__all__ = ["ServeConfig", "create_app", "serve"]
