"""``services.localcluster``: three nats-server processes, an R3 stream, kill -9 of its leader."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore
from services.localcluster import local_cluster
from services.wiring import nats_servers

pytestmark = [pytest.mark.timeout(300), pytest.mark.faults]


async def test_an_r3_stream_survives_kill_9_of_its_leader_and_a_follower(tmp_path: Path) -> None:
    streams = StreamNames("LC", "LC_DERIVED", Subjects("lc."))
    with local_cluster(tmp_path / "cluster") as cluster:
        assert len(cluster.alive()) == 3
        nc = await nats.connect(nats_servers(cluster.urls), max_reconnect_attempts=-1)
        try:
            await EventStore(nc, streams).ensure_streams(replicas=3)
            js = nc.jetstream()

            async def publish(n: int) -> int:
                """Publish message n as a client must across a failover: retried, same msg id."""
                for attempt in range(6):
                    try:
                        ack = await js.publish(
                            streams.subjects.card("x"),
                            b"%d" % n,
                            timeout=20,
                            headers={"Nats-Msg-Id": f"m{n}"},
                        )
                        return int(ack.seq)
                    except nats.errors.TimeoutError:
                        if attempt == 5:
                            raise
                return 0

            info = await js.stream_info("LC")
            assert info.config.num_replicas == 3
            acked = [await publish(n) for n in range(20)]
            leader = cluster.wait_stream_leader("LC")
            cluster.kill(leader)
            assert leader not in cluster.alive()
            successor = cluster.wait_stream_leader("LC", not_=leader)
            assert successor != leader
            for n in range(20, 40):
                acked.append(await publish(n))
            cluster.restart(leader)
            cluster.wait_stream_current("LC", timeout=120)  # else killing one more loses quorum
            follower = next(n for n in cluster.stream_followers("LC") if n in cluster.alive())
            cluster.kill(follower)
            for n in range(40, 50):  # two of three replicas still make a quorum
                acked.append(await publish(n))
            cluster.restart(follower)
            info = await js.stream_info("LC")
            assert info.state.messages == 50
            assert acked == list(range(1, 51))
        finally:
            await nc.close()


def test_nats_servers_splits_a_list() -> None:
    assert nats_servers("nats://a:1, nats://b:2,") == ["nats://a:1", "nats://b:2"]
    assert nats_servers("nats://a:1") == ["nats://a:1"]
