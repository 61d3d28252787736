"""The server core, shared by every runtime: arrivals in, what to send to whom out."""

from fedlora.server.core import ServerCore
from fedlora.server.jobs import Job, Send

__all__ = ["Job", "Send", "ServerCore"]
