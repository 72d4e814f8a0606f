"""Tools the worker executes itself: MCP servers (mcp.py) and our demo server (demo_server.py)."""
