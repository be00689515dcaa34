"""Socket helpers on real loopback sockets: options, bind policy, topic filtering, the size cap."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import zmq

from models.errors import ConfigError
from models.errors import FetalheadError
from stream import net
from stream.protocol import Heartbeat, decode, encode, frame_message, topic

TIMEOUT_S = 5.0


def _recv(sock: zmq.Socket, timeout_s: float = TIMEOUT_S) -> bytes:
    """The next message, failing the test instead of hanging when none comes."""
    data = net.recv(sock, timeout_s)
    if data is None:
        pytest.fail(f"no message within {timeout_s} s")
    return data


def _send_until_received(sender: zmq.Socket, receiver: zmq.Socket, message: bytes) -> None:
    """Send ``message`` until ``receiver`` gets it: PUB drops everything before the
    subscription arrives, and a reconnect takes ZMQ_RECONNECT_IVL (100 ms)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            sender.send(message, zmq.NOBLOCK)
        except zmq.Again:  # PUSH with no connected peer yet
            pass
        data = net.recv(receiver, 0.02)
        if data is not None:
            assert data == message
            while net.recv(receiver, 0.05) is not None:  # drain the extra copies
                pass
            return
    pytest.fail(f"{message!r} never arrived within {TIMEOUT_S} s")


# --- bind policy -----------------------------------------------------------------------


@pytest.mark.parametrize("addr", [
    net.DEFAULT_PUB, net.DEFAULT_SCORES, "tcp://127.3.2.1:7000", "tcp://localhost:5555", "tcp://[::1]:5555",
    "ipc:///tmp/fetalhead-frames", "inproc://frames",
])
def test_loopback_and_local_addresses_may_be_bound(addr, caplog):
    with caplog.at_level(logging.WARNING, logger="stream.net"):
        net.check_bind_address(addr, allow_remote=False)
    assert not caplog.records


@pytest.mark.parametrize("addr", [
    "tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://eth0:5555", "tcp://192.168.1.20:5555", "tcp://[::]:5555",
    "tcp://scanner.example.org:5555", "epgm://eth0;239.192.1.1:5555",
])
def test_remote_addresses_need_allow_remote_and_log_a_warning(addr, caplog):
    with pytest.raises(ConfigError, match="not a loopback address.*needs allow_remote"):
        net.check_bind_address(addr, allow_remote=False)
    with caplog.at_level(logging.WARNING, logger="stream.net"):
        net.check_bind_address(addr, allow_remote=True)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert addr in caplog.records[0].getMessage()


@pytest.mark.parametrize("addr", ["127.0.0.1:5555", "tcp://127.0.0.1", "tcp://:5555"])
def test_malformed_addresses_are_config_errors(addr):
    with pytest.raises(ConfigError, match="expected"):
        net.check_bind_address(addr, allow_remote=True)


def test_socket_refuses_a_remote_bind_before_binding():
    with pytest.raises(ConfigError, match="needs allow_remote"):
        net.socket(zmq.PUB, bind="tcp://0.0.0.0:5555")


def test_binding_a_taken_address_is_a_one_line_config_error():
    addr = net.free_tcp_address()
    with net.socket(zmq.PUB, bind=addr):
        with pytest.raises(ConfigError, match=f"address '{addr}': cannot bind") as info:
            net.socket(zmq.PUB, bind=addr)
    assert isinstance(info.value, FetalheadError) and "\n" not in str(info.value)


# --- socket options and arguments ------------------------------------------------------


def test_socket_sets_its_options():
    with net.socket(zmq.SUB, connect=net.free_tcp_address(), hwm=3, conflate=True, max_size=1234,
                    linger=7, subscribe=[topic("probe1")]) as sock:
        assert sock.getsockopt(zmq.SNDHWM) == sock.getsockopt(zmq.RCVHWM) == 3
        assert sock.getsockopt(zmq.MAXMSGSIZE) == 1234
        assert sock.getsockopt(zmq.LINGER) == 7
        assert sock.getsockopt(zmq.CONFLATE) == 1
        assert sock.getsockopt(zmq.TCP_KEEPALIVE) == 1
    with net.socket(zmq.PUSH, bind=net.free_tcp_address()) as sock:
        assert sock.getsockopt(zmq.SNDHWM) == net.DEFAULT_HWM
        assert sock.getsockopt(zmq.LINGER) == 0
        assert sock.getsockopt(zmq.CONFLATE) == 0
    assert sock.closed


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(), "exactly one of bind= or connect="),
    (dict(bind="inproc://a", connect="inproc://a"), "exactly one of bind= or connect="),
    (dict(connect="inproc://a", subscribe=[b""]), "subscribe is only for SUB sockets"),
    (dict(connect="inproc://a", hwm=-1), "hwm must be >= 0"),
    (dict(connect="inproc://a", max_size=0), "max_size must be >= 1"),
    (dict(connect="inproc://a", linger=-1), "linger must be >= 0"),
])
def test_socket_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        net.socket(zmq.PULL, **kwargs)


def test_context_is_shared():
    assert net.context() is net.context() is zmq.Context.instance()


def test_free_tcp_address_can_be_bound():
    addr = net.free_tcp_address()
    assert addr.startswith("tcp://127.0.0.1:")
    with net.socket(zmq.PULL, bind=addr) as sock:
        assert sock.getsockopt_string(zmq.LAST_ENDPOINT) == addr


def test_recv_returns_none_after_its_timeout():
    with net.socket(zmq.PULL, bind=net.free_tcp_address()) as sock:
        start = time.monotonic()
        assert net.recv(sock, 0.1) is None
        assert 0.09 <= time.monotonic() - start < 2.0
        with pytest.raises(ValueError, match="timeout_s must be >= 0"):
            net.recv(sock, -1)


# --- delivery --------------------------------------------------------------------------


def test_subscriber_gets_exactly_its_stream():
    addr = net.free_tcp_address()
    with net.socket(zmq.PUB, bind=addr) as pub, \
            net.socket(zmq.SUB, connect=addr, subscribe=[topic("probe1")]) as sub:
        _send_until_received(pub, sub, encode(frame_message("probe1", 0, np.zeros((2, 2), np.uint8))))
        others = [encode(frame_message(stream, 1, np.zeros((2, 2), np.uint8))) for stream in ("probe10", "probe2")]
        wanted = [frame_message("probe1", seq, np.full((4, 4, 3), seq, np.uint8), t_capture=1.0) for seq in (1, 2)]
        for data in [others[0], encode(wanted[0]), others[1], encode(Heartbeat("_worker", "worker", 1, 1.0, {})),
                     encode(wanted[1])]:
            pub.send(data)
        assert [decode(_recv(sub)) for _ in wanted] == wanted
        assert net.recv(sub, 0.2) is None


def test_push_pull_delivers_every_frame_in_order():
    addr = net.free_tcp_address()
    with net.socket(zmq.PUSH, bind=addr) as push, net.socket(zmq.PULL, connect=addr) as pull:
        for seq in range(50):
            push.send(encode(frame_message("probe1", seq, np.full((8, 8), seq, np.uint8))))
        assert [decode(_recv(pull)).seq for _ in range(50)] == list(range(50))


def test_conflating_subscriber_keeps_only_the_newest_message():
    addr = net.free_tcp_address()
    # A queue of 100 on the publisher, so it drops none of the 20 (its default 16 may).
    with net.socket(zmq.PUB, bind=addr, hwm=100) as pub, net.socket(zmq.SUB, connect=addr, conflate=True) as sub:
        _send_until_received(pub, sub, b"probe1\x00hello")
        for seq in range(20):
            pub.send(b"probe1\x00%d" % seq)
        time.sleep(0.3)  # let all 20 reach the subscriber's one-message queue
        assert _recv(sub) == b"probe1\x0019"
        assert net.recv(sub, 0.1) is None


# --- the size cap ----------------------------------------------------------------------

MAX = 1000
PAIRS = [pytest.param(zmq.PUB, zmq.SUB, id="pub-sub"), pytest.param(zmq.PUSH, zmq.PULL, id="push-pull")]


@pytest.mark.parametrize(("send_kind", "recv_kind"), PAIRS)
def test_oversized_message_closes_a_connecting_receiver_until_it_reconnects(send_kind, recv_kind):
    """Our topology (the receiver connects): ZeroMQ drops the oversized message and the
    connection, and libzmq 4.3 does not reconnect it, because a message over
    ZMQ_MAXMSGSIZE is a protocol error. Disconnecting and connecting again resumes."""
    addr = net.free_tcp_address()
    with net.socket(send_kind, bind=addr) as sender, net.socket(recv_kind, connect=addr, max_size=MAX) as receiver:
        _send_until_received(sender, receiver, b"s\x00before")
        sender.send(b"s\x00" + b"x" * (MAX + 1))
        try:
            sender.send(b"s\x00after", zmq.NOBLOCK)
        except zmq.Again:  # PUSH whose only connection is already gone
            pass
        assert net.recv(receiver, 0.5) is None

        receiver.disconnect(addr)
        receiver.connect(addr)
        _send_until_received(sender, receiver, b"s\x00resumed")


@pytest.mark.parametrize(("send_kind", "recv_kind"), PAIRS)
def test_oversized_message_to_a_binding_receiver_is_dropped_and_the_sender_reconnects(send_kind, recv_kind):
    """With the receiver bound, the sender's automatic reconnect resumes delivery
    without any action; the oversized message never arrives."""
    addr = net.free_tcp_address()
    with net.socket(recv_kind, bind=addr, max_size=MAX) as receiver, net.socket(send_kind, connect=addr) as sender:
        _send_until_received(sender, receiver, b"s\x00before")
        sender.send(b"s\x00" + b"x" * (MAX + 1))
        _send_until_received(sender, receiver, b"s\x00after")


def test_message_at_the_cap_is_delivered():
    addr = net.free_tcp_address()
    with net.socket(zmq.PUSH, bind=addr) as push, net.socket(zmq.PULL, connect=addr, max_size=MAX) as pull:
        push.send(b"s\x00" + b"x" * (MAX - 2))
        assert len(_recv(pull)) == MAX


# --- the receiving end ---------------------------------------------------------------


def test_throttled_warns_once_per_key_and_interval_and_counts_the_rest(caplog):
    now = [100.0]
    warn = net.Throttled(logging.getLogger("tests.throttled"), 5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tests.throttled"):
        assert warn.warning("a", "first a")
        assert not warn.warning("a", "second a")
        assert warn.error("b", "first b")
        now[0] += 5.0
        assert warn.warning("a", "third a")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "first a"), (logging.ERROR, "first b"),
        (logging.WARNING, "third a (and 1 more a since the last warning)")]


def test_an_inbox_reconnects_after_its_silence_and_goes_on_receiving():
    addr = net.free_tcp_address()
    closed = []
    with net.socket(zmq.PUB, bind=addr) as pub, \
            net.Inbox(zmq.SUB, [addr], on_closed=lambda *c: closed.append(c), silence_s=0.2) as inbox:
        _send_until_received(pub, inbox.sock, b"s\x00hello")
        assert not inbox.wait(0.3)
        assert inbox.reconnects == 1
        _send_until_received(pub, inbox.sock, b"s\x00again")
        pub.send(b"s\x00waiting")
        assert inbox.wait(TIMEOUT_S) and inbox.sock.recv() == b"s\x00waiting"
    assert closed == []


def test_an_inbox_reports_a_refused_message_and_reconnects():
    addr = net.free_tcp_address()
    closed = []
    with net.socket(zmq.PUSH, bind=addr) as push, \
            net.Inbox(zmq.PULL, [addr], on_closed=lambda *c: closed.append(c), max_size=MAX) as inbox:
        _send_until_received(push, inbox.sock, b"s\x00before")
        push.send(b"s\x00" + b"x" * (MAX + 1))
        deadline = time.monotonic() + TIMEOUT_S
        while not closed:
            assert time.monotonic() < deadline, "the refusal was never reported"
            inbox.wait(0.05)
        assert closed == [(addr, net.REFUSED_MESSAGE)] and inbox.reconnects == 1
        _send_until_received(push, inbox.sock, b"s\x00resumed")


@pytest.mark.parametrize(("bound", "kind"), [pytest.param(zmq.PUSH, zmq.SUB, id="sub-to-push"),
                                             pytest.param(zmq.PUB, zmq.PULL, id="pull-to-pub")])
def test_an_inbox_tells_a_peer_of_the_other_mode_from_a_refused_message(bound, kind):
    """A live worker's SUB against a lossless capture's PUSH (or PULL against PUB): ZeroMQ refuses the
    pair in the handshake and closes the connection as it does after an oversized message; the
    inbox says which it was, and tries again only after its silence."""
    addr = net.free_tcp_address()
    closed = []
    now = [0.0]
    with net.socket(bound, bind=addr), \
            net.Inbox(kind, [addr], on_closed=lambda *c: closed.append(c), silence_s=30.0,
                      clock=lambda: now[0]) as inbox:
        deadline = time.monotonic() + TIMEOUT_S
        while not closed:
            assert time.monotonic() < deadline, "the refused handshake was never reported"
            now[0] += 0.05
            inbox.wait(0.05)
        assert closed == [(addr, net.WRONG_SOCKET_TYPE)] and inbox.reconnects == 0
        now[0] += 29.0
        inbox.wait(0.05)
        assert inbox.reconnects == 0, "retried before its silence was over"
        now[0] += 1.0
        inbox.wait(0.05)
        assert inbox.reconnects == 1
        while len(closed) < 2:
            assert time.monotonic() < deadline, "the second refusal was never reported"
            now[0] += 0.05
            inbox.wait(0.05)
        assert closed[1] == (addr, net.WRONG_SOCKET_TYPE)


def test_a_subscriber_connected_to_a_lossless_capture_says_so_in_one_line(caplog):
    addr = net.free_tcp_address()
    with net.socket(zmq.PUSH, bind=addr), net.Subscriber(addr) as sub, \
            caplog.at_level(logging.WARNING, logger="stream.net"):
        deadline = time.monotonic() + TIMEOUT_S
        while not sub.rejected:
            assert time.monotonic() < deadline, "the refused handshake was never reported"
            assert sub.receive(0.05) == []
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [(logging.ERROR, f"scores from {addr}: ZeroMQ refused the socket there, which does not publish "
                                     f"(PUB): give the worker's scores address, not a lossless capture's frames "
                                     f"address (PUSH)")]
