"""The server core, shared by every runtime: arrivals in, what to send to whom out."""

from fedlora.server.core import Job, Send, ServerCore

__all__ = ["Job", "Send", "ServerCore"]
