"""The server core, shared by every runtime: arrivals in, what to send to whom out."""

from fedlora.server.core import Job, Send, ServerCore
from fedlora.server.outcome import Evaluation, LocalEvaluation, Outcome
from fedlora.server.snapshot import Snapshot

__all__ = ["Evaluation", "Job", "LocalEvaluation", "Outcome", "Send", "ServerCore", "Snapshot"]
