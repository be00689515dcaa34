"""The hub between captures, workers and consumers, and streams sharded over several workers through it."""

import collections
import threading
import time

import numpy as np
import pytest
import zmq

from models.errors import ConfigError
from stream import keys, net, protocol
from stream.hub import Hub, HubConfig, shard_of
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import WAIT_S, heartbeat, make_frames, recv_until
from tools.commands.hub import main

PROBES = 8
FPS = 30.0
PROBE_SECONDS = 5.0
IMAGE = make_frames(1, height=64, width=64)[0]


def test_worker_heartbeats_and_scores_reach_a_consumer_through_the_hub(sockets, address):
    workers = [address(), address()]
    pubs = [sockets(zmq.PUB, bind=addr) for addr in workers]
    scores = address()
    with Hub(HubConfig(workers=tuple(workers), scores=scores)):
        sub = sockets(zmq.SUB, connect=scores)
        seen: set[str] = set()

        def both(message):
            seen.add(message.stream)
            return seen == {"_worker.0of2", "_worker.1of2", "probe1"}

        # Until the consumer's subscription has gone up through the hub, what the workers send is not for it.
        deadline = time.monotonic() + WAIT_S
        while seen != {"_worker.0of2", "_worker.1of2", "probe1"} and time.monotonic() < deadline:
            for i, pub in enumerate(pubs):
                beat = protocol.Heartbeat(f"_worker.{i}of2", "worker", 100 + i, time.time(), {"frames_out": i})
                pub.send(protocol.encode(beat))
            pubs[0].send(protocol.encode(protocol.EndOfStream("probe1", 3, "eof", time.time())))
            while sub.poll(50):
                both(protocol.decode(sub.recv()))
        assert seen == {"_worker.0of2", "_worker.1of2", "probe1"}


def test_a_workers_stream_topics_travel_up_through_the_hub_to_the_capture(sockets, address):
    capture, frames = address(), address()
    pub = sockets(zmq.PUB, bind=capture)
    with Hub(HubConfig(captures=(capture,), frames=frames)):
        sub = sockets(zmq.SUB, connect=frames, subscribe=[protocol.topic("left"), b"_"])
        got = []
        deadline = time.monotonic() + WAIT_S
        while len(got) < 3 and time.monotonic() < deadline:
            for stream in ("right", "left"):
                pub.send(protocol.encode(protocol.frame_message(stream, 0, IMAGE)))
            pub.send(protocol.encode(heartbeat()))
            while sub.poll(20):
                got.append(protocol.decode(sub.recv()))
        assert {m.stream for m in got} <= {"left", "_worker"} and len(got) >= 3


def test_with_keys_both_sides_of_the_hub_are_curve(tmp_path, sockets, address):
    folder = tmp_path / "keys"
    keys.make_keys(folder, ["capture", "worker", "client", "hub"])
    worker_addr, scores = address(), address()
    worker_pub = sockets(zmq.PUB, bind=worker_addr, curve=keys.server_keys(folder, "worker"))
    with Hub(HubConfig(workers=(worker_addr,), scores=scores, keys=folder)):
        plain = sockets(zmq.SUB, connect=scores)
        secure = sockets(zmq.SUB, connect=scores, curve=keys.client_keys(folder, "client", "hub"))
        deadline = time.monotonic() + WAIT_S
        while not secure.poll(0) and time.monotonic() < deadline:
            worker_pub.send(protocol.encode(heartbeat(time.time())))
            time.sleep(0.05)
        assert protocol.decode(secure.recv()).stream == "_worker"
        # A client without the hub's key gets nothing at all.
        assert not plain.poll(200)


@pytest.mark.parametrize(("flags", "message"), [
    ([], "hub.captures, workers: give at least one side"),
    (["--workers", "nowhere"], "hub.workers: 'nowhere' is not an address"),
    (["--workers", "tcp://127.0.0.1:1", "--frames", "tcp://127.0.0.1:2", "--scores", "tcp://127.0.0.1:2"],
     "hub.frames, scores: both are 'tcp://127.0.0.1:2'"),
    (["--workers", "tcp://127.0.0.1:1", "--scores", "tcp://0.0.0.0:5566"], "address 'tcp://0.0.0.0:5566': not a "
                                                                           "loopback address"),
    (["--workers", "tcp://127.0.0.1:1", "--worker-key", "w.key"], "hub.worker_key: needs keys (--keys DIR)"),
])
def test_bad_hub_settings_are_one_line_each(flags, message, capsys):
    assert main(flags) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fetalhead: error: {message}") and "\n" not in err


def test_a_bad_address_fails_before_the_hub_runs(address):
    with pytest.raises(ConfigError, match="cannot connect"):
        Hub(HubConfig(workers=(address(), "tcp://no-such-host-:x")))


def _hub(config, stop):
    with Hub(config):
        stop.wait()


# --- load: 8 probes at 30 fps over 2 workers and the hub ------------------------------------------

def probe(stream, addr, ready, stop):
    """A synthetic probe: its own PUB, 30 fps of 64x64 frames for PROBE_SECONDS, then an end of stream."""
    with net.socket(zmq.PUB, bind=addr) as pub:
        ready.wait(WAIT_S)
        seq, start = 0, time.monotonic()
        while seq < PROBE_SECONDS * FPS and not stop.is_set():
            pub.send(protocol.encode(protocol.frame_message(stream, seq, IMAGE)))
            seq += 1
            time.sleep(max(0.0, start + seq / FPS - time.monotonic()))
        # Live: a worker that is behind may still hold this stream's last frame; the end follows it.
        for _ in range(3):
            pub.send(protocol.encode(protocol.EndOfStream(stream, seq - 1, "max_frames", time.time())))
            time.sleep(0.2)
        return seq


@pytest.mark.slow
def test_eight_live_probes_over_two_workers_and_a_hub(background, sockets, address, tiny_bundle):
    streams = [f"probe{i}" for i in range(PROBES)]
    assert {shard_of(s, 2) for s in streams} == {0, 1}
    captures = [address() for _ in streams]
    frames, scores = address(), address()
    worker_scores = [address(), address()]
    go = threading.Event()
    for stream, addr in zip(streams, captures):
        background(lambda stop, stream=stream, addr=addr: probe(stream, addr, go, stop))
    hub_config = HubConfig(captures=tuple(captures), frames=frames, workers=tuple(worker_scores), scores=scores)
    background(lambda stop: _hub(hub_config, stop))
    sub = sockets(zmq.SUB, connect=scores)
    workers = []
    for i, addr in enumerate(worker_scores):
        config = WorkerConfig(sub=(frames,), pub=addr, shard=f"{i}/2", heartbeat_s=0.25)
        workers.append(background(lambda stop, config=config: serve(tiny_bundle, config, stop)))
        # One at a time: two Keras models built at once in one process share its graph names.
        recv_until(sub, lambda m, i=i: isinstance(m, protocol.Heartbeat) and m.stream == f"_worker.{i}of2"
                   and not m.loading)
    go.set()

    owners = collections.defaultdict(set)  # stream -> workers whose heartbeats counted its scores
    got = collections.defaultdict(list)
    ended: set[str] = set()

    def fold(message):
        if isinstance(message, protocol.Heartbeat) and message.role == "worker":
            for key, value in message.stats.items():
                if key.startswith("frames_out.") and value:
                    owners[key.partition(".")[2]].add(message.stream)
        elif isinstance(message, protocol.Score):
            got[message.stream].append(message)
        elif isinstance(message, protocol.EndOfStream):
            ended.add(message.stream)
        return ended == set(streams)

    recv_until(sub, fold, timeout_s=PROBE_SECONDS + WAIT_S)
    report = []
    for stream in streams:
        seqs = [s.seq for s in got[stream]]
        assert len(seqs) >= 10, f"{stream}: only {len(seqs)} scores"
        assert seqs == sorted(set(seqs)), f"{stream}: a frame scored twice or out of order"
        assert owners[stream] == {f"_worker.{shard_of(stream, 2)}of2"}, f"{stream}: scored by {owners[stream]}"
        p99_ms = float(np.percentile([s.latency for s in got[stream]], 99)) * 1000
        report.append(f"{stream}: {len(seqs)} scored, {got[stream][-1].dropped} dropped, p99 {p99_ms:.1f} ms")
    # Figures, not asserts (speed is for fetalhead bench): shown with pytest -rP.
    print("\n".join(report))


# --- lossless fan-out: each stream's PUSH to the worker of its shard ----------------------------

@pytest.mark.slow
def test_lossless_streams_over_two_workers_are_each_scored_once_in_order(background, sockets, address,
                                                                         tiny_bundle):
    streams = [f"scan{i}" for i in range(6)]
    frames_per_stream = 24
    pushes = {s: address() for s in streams}
    push_socks = {s: sockets(zmq.PUSH, bind=addr, hwm=0) for s, addr in pushes.items()}
    worker_scores = [address(), address()]
    scores = address()
    background(lambda stop: _hub(HubConfig(workers=tuple(worker_scores), scores=scores), stop))
    sub = sockets(zmq.SUB, connect=scores, hwm=0)
    workers = []
    for i, addr in enumerate(worker_scores):
        mine = [s for s in streams if shard_of(s, 2) == i]
        assert mine, "both workers must own a stream"
        config = WorkerConfig(sub=tuple(pushes[s] for s in mine), pub=addr, mode="lossless", shard=f"{i}/2",
                              heartbeat_s=0.25, exit_after_eos=len(mine), max_batch=4)
        workers.append(background(lambda stop, config=config: serve(tiny_bundle, config, stop)))
        recv_until(sub, lambda m, i=i: isinstance(m, protocol.Heartbeat) and m.stream == f"_worker.{i}of2"
                   and not m.loading)
    for seq in range(frames_per_stream):
        for stream in streams:
            push_socks[stream].send(protocol.encode(protocol.frame_message(stream, seq, IMAGE)))
    for stream in streams:
        push_socks[stream].send(protocol.encode(
            protocol.EndOfStream(stream, frames_per_stream - 1, "eof", time.time())))

    ended: set[str] = set()
    got = collections.defaultdict(list)

    def fold(message):
        if isinstance(message, protocol.Score):
            got[message.stream].append(message.seq)
        elif isinstance(message, protocol.EndOfStream):
            ended.add(message.stream)
        return ended == set(streams)

    recv_until(sub, fold)
    assert {s: got[s] for s in streams} == {s: list(range(frames_per_stream)) for s in streams}
    results = [worker.join() for worker in workers]
    assert sum(r.frames_out for r in results) == len(streams) * frames_per_stream
    assert all(r.rejected == {} for r in results)
