"""A worker's subset of the streams: ``--streams`` (topic subscriptions) and ``--shard I/N`` (CRC-32 mod N)."""

import time
import zlib

import pytest
import zmq

from stream import protocol
from stream.hub import parse_shard, shard_of
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import make_frames, recv_until
from tools.commands.worker import main

IMAGE = make_frames(1, height=32, width=32)[0]


def test_the_shard_is_crc32_of_the_utf8_id_mod_n_as_documented():
    # The worked example of docs/protocol.md, "Several workers": any language's CRC-32 gives these.
    assert zlib.crc32(b"probe1") == 1487960078 == 0x58B0780E
    assert [shard_of("probe1", n) for n in (1, 2, 3, 4)] == [0, 0, 2, 2]
    assert shard_of("sonde-é", 7) == zlib.crc32("sonde-é".encode()) % 7


def test_the_shards_of_n_split_the_streams_with_none_left_out_or_twice():
    streams = [f"probe{i}" for i in range(40)]
    owners = {s: [i for i in range(3) if WorkerConfig(shard=f"{i}/3").owns(s)] for s in streams}
    assert all(len(found) == 1 for found in owners.values())
    assert {found[0] for found in owners.values()} == {0, 1, 2}


def test_streams_and_shard_together_take_what_both_allow():
    config = WorkerConfig(streams=("probe1", "probe2"), shard="0/2")
    assert [config.owns(s) for s in ("probe1", "probe2", "probe4")] == [
        shard_of("probe1", 2) == 0, shard_of("probe2", 2) == 0, False]
    assert WorkerConfig().owns("anything") and parse_shard("") is None


@pytest.mark.parametrize(("flags", "message"), [
    (["--shard", "3/2"], "worker.shard: '3/2' has shard 3 of 2; I must be in 0..1"),
    (["--shard", "0/0"], "worker.shard: '0/0' has N = 0 shards; N must be >= 1"),
    (["--shard", "a/b"], "worker.shard: 'a/b' is not I/N (shard I of N, e.g. 0/2)"),
    (["--streams", "probe1,bad id"], "worker.streams: stream must be 1..64 characters"),
    (["--streams", "_worker"], "worker.streams: '_worker' is a process id, not a data stream"),
    (["--name", "a b"], "worker.name: process id must be 1..64 characters"),
])
def test_a_bad_subset_is_one_line_before_the_model_loads(flags, message, capsys, tmp_path):
    assert main(["--model", str(tmp_path / "none.fhb"), *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fetalhead: error: {message}") and "\n" not in err


def test_heartbeats_name_the_shard_so_workers_are_told_apart():
    assert [WorkerConfig(shard=s).process_id for s in ("", "0/2", "1/2")] == ["_worker", "_worker.0of2",
                                                                              "_worker.1of2"]
    assert WorkerConfig(shard="1/2", name="gpu1").process_id == "_worker.gpu1"


# --- a real worker ---------------------------------------------------------------------------

def streams_of_shards(count, per_shard):
    """``per_shard`` stream ids of each shard of ``count``: {shard: [ids]}."""
    found = {i: [] for i in range(count)}
    for n in range(1000):
        stream = f"probe{n}"
        if len(found[shard_of(stream, count)]) < per_shard:
            found[shard_of(stream, count)].append(stream)
    return found


def publish(pub, streams, stop, period_s=0.03):
    """Frames of every stream, round and round, until ``stop``."""
    seq = 0
    while not stop.is_set():
        for stream in streams:
            pub.send(protocol.encode(protocol.frame_message(stream, seq, IMAGE)))
        seq += 1
        time.sleep(period_s)


def heartbeat_of(sub, process_id, done=lambda beat: True):
    return recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and m.stream == process_id
                      and not m.loading and done(m))[-1]


def scores_until(sub, streams, count):
    """Messages until every one of ``streams`` has ``count`` scores."""
    seen = {s: 0 for s in streams}

    def enough(m):
        if isinstance(m, protocol.Score) and m.stream in seen:
            seen[m.stream] += 1
        return min(seen.values()) >= count

    return recv_until(sub, enough)


@pytest.mark.slow
def test_a_live_worker_with_streams_never_receives_the_others(background, sockets, address, tiny_bundle):
    frames_addr, scores_addr = address(), address()
    pub = sockets(zmq.PUB, bind=frames_addr)
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, heartbeat_s=0.1, streams=("left",))
    background(lambda stop: serve(tiny_bundle, config, stop))
    sub = sockets(zmq.SUB, connect=scores_addr)
    heartbeat_of(sub, "_worker")
    background(lambda stop: publish(pub, ["left", "right"], stop))

    messages = scores_until(sub, ["left"], 5)
    beat = heartbeat_of(sub, "_worker")
    assert not [m for m in messages if getattr(m, "stream", None) == "right"]
    # Not skipped by the worker but filtered by ZeroMQ at the publisher: none of them ever arrived.
    assert beat.stats["other_streams"] == 0 and "frames_out.right" not in beat.stats
    assert beat.stats["frames_out.left"] >= 5


@pytest.mark.slow
def test_a_live_worker_of_a_shard_scores_its_streams_and_counts_the_others(background, sockets, address,
                                                                           tiny_bundle):
    shards = streams_of_shards(2, 2)
    frames_addr, scores_addr = address(), address()
    pub = sockets(zmq.PUB, bind=frames_addr)
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, heartbeat_s=0.1, shard="1/2")
    background(lambda stop: serve(tiny_bundle, config, stop))
    sub = sockets(zmq.SUB, connect=scores_addr)
    heartbeat_of(sub, "_worker.1of2")
    background(lambda stop: publish(pub, shards[0] + shards[1], stop))

    messages = scores_until(sub, shards[1], 5)
    beat = heartbeat_of(sub, "_worker.1of2", lambda b: b.stats["other_streams"] > 0)
    assert {m.stream for m in messages if isinstance(m, protocol.Score)} == set(shards[1])
    assert not any(f"frames_out.{s}" in beat.stats for s in shards[0])
    assert not any(k.startswith("rejected.") for k in beat.stats)


@pytest.mark.slow
def test_a_lossless_frame_outside_the_shard_is_rejected_as_lost(background, sockets, address, tiny_bundle):
    shards = streams_of_shards(2, 1)
    ours, theirs = shards[0][0], shards[1][0]
    frames_addr, scores_addr = address(), address()
    push = sockets(zmq.PUSH, bind=frames_addr)
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.1, shard="0/2",
                          exit_after_eos=1)
    worker = background(lambda stop: serve(tiny_bundle, config, stop))
    sub = sockets(zmq.SUB, connect=scores_addr)
    heartbeat_of(sub, "_worker.0of2")
    for seq in range(3):
        push.send(protocol.encode(protocol.frame_message(ours, seq, IMAGE)))
        push.send(protocol.encode(protocol.frame_message(theirs, seq, IMAGE)))
    push.send(protocol.encode(protocol.EndOfStream(ours, 2, "eof", time.time())))

    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))
    assert [(m.stream, m.seq) for m in messages if isinstance(m, protocol.Score)] == [(ours, 0), (ours, 1),
                                                                                     (ours, 2)]
    stats = worker.join()
    assert stats.frames_out == 3 and stats.rejected == {"not_ours": 3}
