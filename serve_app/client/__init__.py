"""The client side: Python SDK (gRPC), CLI and load tool. Imports no server module."""

from serve_app.client.sdk import AsyncServeflowClient, RetryPolicy, ServeflowClient

__all__ = ["AsyncServeflowClient", "RetryPolicy", "ServeflowClient"]
