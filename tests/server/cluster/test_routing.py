"""``server.cluster.routing``: the router's ranking on replicas that answer their queue length like Serve's
``RunningReplica`` (no Ray started): flights arriving together spread, loads and recent picks decide the order."""
import asyncio
import random
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[cluster]')")
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID  # noqa: E402

from server.cluster.routing import PICK_TTL_S, FewestRequestsRouter  # noqa: E402

DEPLOYMENT = DeploymentID(name="Flights", app_name="wanfly")


class Replica:
    """Answers its ongoing requests after an await, as an actor call does."""

    def __init__(self, name: str, ongoing: int = 0, max_ongoing: int = 2):
        self.replica_id = ReplicaID(unique_id=name, deployment_id=DEPLOYMENT)
        self.ongoing, self.max_ongoing_requests, self.asked = ongoing, max_ongoing, 0

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.asked += 1
        await asyncio.sleep(0)
        return self.ongoing


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make_router(clock):
    router = FewestRequestsRouter(deployment_id=DEPLOYMENT,
                                  handle_source=DeploymentHandleSource.PROXY, use_replica_queue_len_cache=True,
                                  get_curr_time_s=clock)
    router.initialize_state(clock=clock)
    return router


def request(name: str):
    return SimpleNamespace(metadata=SimpleNamespace(internal_request_id=name))


def firsts(router, replicas, names):
    async def main():
        return await asyncio.gather(*(router.choose_replicas(replicas, request(n)) for n in names))
    return [ranks[0][0].replica_id.unique_id for ranks in asyncio.run(main())]


@pytest.mark.parametrize("seed", range(8))  # the tie between idle replicas is broken at random
def test_flights_arriving_together_go_to_different_idle_replicas(seed):
    random.seed(seed)
    router = make_router(Clock())
    replicas = [Replica("a"), Replica("b")]
    assert sorted(firsts(router, replicas, ["f1", "f2"])) == ["a", "b"]
    assert [r.asked for r in replicas] == [2, 2]  # neither was known to Serve's cache: both were asked


@pytest.mark.parametrize("seed", range(8))
def test_a_short_request_that_was_sent_and_ended_does_not_weigh_on_the_next_flights(seed):
    random.seed(seed)
    router = make_router(Clock())
    replicas = [Replica("a"), Replica("b")]
    chosen = asyncio.run(router.choose_replicas(replicas, request("get /metrics")))[0][0].replica_id
    router.on_send_request(chosen)  # what Serve does once it sent the request: its cache counts it
    router.decrement_queue_len_cache(chosen)  # and once the request ended
    assert sorted(firsts(router, replicas, ["f1", "f2"])) == ["a", "b"]


def test_the_least_loaded_replica_ranks_first_and_every_replica_has_a_rank():
    router = make_router(Clock())
    replicas = [Replica("a", ongoing=2, max_ongoing=3), Replica("b", ongoing=0), Replica("c", ongoing=1)]
    ranks = asyncio.run(router.choose_replicas(replicas, request("f1")))
    assert [[r.replica_id.unique_id for r in rank] for rank in ranks] == [["b"], ["c"], ["a"]]


def test_a_pick_counts_until_it_expires_and_a_request_ranked_again_replaces_its_pick():
    clock = Clock()
    router = make_router(clock)
    replicas = [Replica("a", ongoing=0), Replica("b", ongoing=1)]
    assert firsts(router, replicas, ["f1"]) == ["a"]  # a: 0 + its pick 1 = b's 1 from now on
    assert firsts(router, replicas, ["f1"]) == ["a"]  # the same request again: its own pick is not counted twice
    assert sorted(firsts(router, replicas, ["f2", "f3"])) == ["a", "b"]  # a tie at 1, then the other one
    clock.now += PICK_TTL_S + 0.1  # the picks have expired: the cached loads alone decide
    assert firsts(router, replicas, ["f4"]) == ["a"]


def test_a_replica_that_does_not_answer_ranks_last():
    class Silent(Replica):
        async def get_queue_len(self, *, deadline_s):
            raise TimeoutError("no answer")

    router = make_router(Clock())
    ranks = asyncio.run(router.choose_replicas([Silent("a"), Replica("b", ongoing=1)], request("f1")))
    assert [rank[0].replica_id.unique_id for rank in ranks] == ["b", "a"]


def test_no_replicas_no_ranks():
    assert asyncio.run(make_router(Clock()).choose_replicas([], request("f1"))) == []
