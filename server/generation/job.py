"""A job's state (``POST /generate``, gradio, ``python -m server.generate``): what the engine makes of it part by part
and what the REST API reports."""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from server.generation.generators import GenRequest


@dataclass
class Job:
    request: GenRequest
    fps: int
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    status: str = "queued"  # queued, running, done, failed
    progress: float = 0.0
    error: Optional[str] = None
    frames: int = 0
    created: float = field(default_factory=time.time)
    finished: Optional[float] = None
    done: threading.Event = field(default_factory=threading.Event)
    parts: Optional[Iterator[np.ndarray]] = None  # Generator.generate_parts, while running
    made: list = field(default_factory=list)  # the parts made so far, (n, H, W, 3) each
