"""The request router of the ``Flights`` deployment: every request to the replica with the fewest ongoing requests.

Serve's default (power of two choices) compares two random replicas; with more than two, a flight could land on a
full one while another has room. This router ranks all replicas, one per rank, by their load: the ongoing requests
Serve last heard of (its queue-length cache; a replica missing there is asked first) plus the requests this router
ranked it first for that Serve has not sent yet (for at most ``PICK_TTL_S`` seconds). Serve tries the ranks in
order, skips a replica at ``max_ongoing_requests`` and takes the first with room. Ties go to a random one. A
flight's WebSocket is one request, so it stays on the chosen replica for its whole life.

Why count picks: Serve updates its cache only once a request has been sent, so flights arriving together were all
ranked on the same counts and could all land on one replica while another stood idle (seen: two flights started at
once shared one of two replicas in two of three benchmark rounds). The ranking after the last ``await`` is
synchronous, so each request sees the picks of those ranked before it. A pick counts until Serve sends a request to
that replica (``on_send_request``: from then on Serve's cache counts it, until it ends): a pick that outlived its
request (a short GET) would otherwise weigh on the next flights' ranking as if it were still running.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Dict, List, Optional, Tuple

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

PICK_TTL_S = 2.0
UNKNOWN = 1 << 30  # a replica that did not answer ranks last (Serve probes it itself if it gets that far)


class FewestRequestsRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, clock=time.monotonic, **kwargs):
        self._clock = clock
        self._picks: Dict[object, Tuple[object, float]] = {}  # request key -> (replica id, when ranked first)

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        await self.ask_unknown(candidate_replicas)
        return self.rank(candidate_replicas, pending_request)

    async def ask_unknown(self, candidates: List[RunningReplica]) -> None:
        """Fills Serve's queue-length cache for the replicas it has no fresh count of."""
        unknown = [r for r in candidates if self.replica_queue_len_cache.get(r.replica_id) is None]
        if not unknown:
            return
        deadline = self.max_queue_len_response_deadline_s  # Serve's longest wait for an answer: a loaded host is slow
        answers = await asyncio.gather(*(asyncio.wait_for(r.get_queue_len(deadline_s=deadline), deadline)
                                         for r in unknown), return_exceptions=True)
        for replica, answer in zip(unknown, answers):
            if isinstance(answer, int):
                self.replica_queue_len_cache.update(replica.replica_id, answer)

    def rank(self, candidates: List[RunningReplica], pending_request: Optional[PendingRequest]) -> List[List]:
        """One replica per rank, least loaded first; the first is counted as this request's pick."""
        if not candidates:
            return []
        now = self._clock()
        self._picks = {key: pick for key, pick in self._picks.items() if now - pick[1] < PICK_TTL_S}
        key = self.request_key(pending_request)
        self._picks.pop(key, None)  # a request ranked again (every replica was full) replaces its earlier pick
        recent = Counter(replica_id for replica_id, _ in self._picks.values())
        replicas = list(candidates)
        random.shuffle(replicas)  # ties: the sort keeps this random order
        replicas.sort(key=lambda r: self.load(r.replica_id) + recent[r.replica_id])
        self._picks[key] = (replicas[0].replica_id, now)
        return [[replica] for replica in replicas]

    def on_send_request(self, replica_id) -> None:
        """Serve sent a request there and counted it in its cache: the oldest pick of that replica is done."""
        super().on_send_request(replica_id)
        sent = [(when, key) for key, (picked, when) in self._picks.items() if picked == replica_id]
        if sent:
            del self._picks[min(sent, key=lambda pick: pick[0])[1]]

    def load(self, replica_id) -> int:
        ongoing = self.replica_queue_len_cache.get(replica_id)
        return UNKNOWN if ongoing is None else ongoing

    @staticmethod
    def request_key(pending_request: Optional[PendingRequest]) -> object:
        request_id = getattr(getattr(pending_request, "metadata", None), "internal_request_id", None)
        return request_id if request_id else object()  # no id: a pick of its own
