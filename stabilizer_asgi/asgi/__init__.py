"""The ASGI adapter: scope dispatch, the per-connection driver and the middleware's own routes."""
