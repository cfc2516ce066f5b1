"""The request router of the ``Flights`` deployment: every request to the replica with the fewest ongoing requests.

Serve's default (power of two choices) compares two random replicas; with more than two, a flight could land on a
full one while another has room. This router hands Serve all replicas as one rank: Serve reads each one's ongoing
requests (cached, probed when unknown or full), skips those at ``max_ongoing_requests`` and takes the lowest. Ties go
to a random one. A flight's WebSocket is one request, so it stays on the chosen replica for its whole life.
"""
from __future__ import annotations

import random
from typing import List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


class FewestRequestsRouter(FIFOMixin, RequestRouter):
    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        replicas = list(candidate_replicas)
        random.shuffle(replicas)  # Serve takes the first of equally loaded replicas
        return [replicas] if replicas else []
