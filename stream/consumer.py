"""What every consumer of the worker's scores shares: its settings, its subscriber, its smoothed verdicts.

``watch``, ``record`` and ``view`` each connect to the scores socket the
same way (address, one stream or all, receive queue, CURVE keys) and show
the same smoothed verdict (``models.verdict.Hysteresis``, ``hold`` frames).
``ConsumerConfig`` holds those settings once; ``subscriber`` opens the
socket from them; ``StreamVerdicts`` keeps one hysteresis per stream so
that every consumer folds a stream's scores through the same rule;
``lost_at_start`` is the one rule for frames lost before a stream's first
score.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from models.settings import check, setting
from models.verdict import DEFAULT_HOLD, Hysteresis, Verdict, check_hold
from stream import keys, net, protocol
from stream.keys import key_name_setting, keys_setting, server_key_setting

HOLD_HELP = ("frames at or above (below) the threshold before the shown verdict turns Head (Not-Head); "
             "1 shows the raw decision")


@dataclasses.dataclass(frozen=True)
class ConsumerConfig:
    """The settings every scores consumer has.

    ``stream`` None takes every stream. ``hwm`` is the receive queue in
    messages. ``keys`` makes it a CURVE client (see ``stream.keys``): key
    pair ``key_name`` (default ``client``), the worker's public key
    ``server_key`` (default ``keys/worker.key``). ``hold`` is the verdict's
    hysteresis (``models.verdict``).
    """

    sub: str = setting(net.DEFAULT_SCORES, "scores address to connect to")
    stream: str | None = setting(None, "only this stream", shown="every stream")
    until_eos: bool = setting(False, "exit when every stream seen has ended, instead of running until Ctrl-C")
    hwm: int = setting(64, "receive queue in messages")
    hold: int = setting(DEFAULT_HOLD, HOLD_HELP)
    keys: Path | None = keys_setting()
    key_name: str | None = key_name_setting("client")
    server_key: Path | None = server_key_setting("worker")

    def __post_init__(self) -> None:
        keys.check_options(self.keys, key_name=self.key_name, server_key=self.server_key)
        protocol.check_stream_id(self.stream)
        check(self.hwm >= 1, f"hwm: must be >= 1, got {self.hwm}")
        check_hold(self.hold)


def subscriber(config: ConsumerConfig, **options: object) -> net.Subscriber:
    """The ``net.Subscriber`` a consumer's settings describe; ``options`` go to it as given."""
    curve = keys.client_keys(config.keys, config.key_name or "client", "worker", config.server_key)
    return net.Subscriber(config.sub, config.stream, hwm=config.hwm, curve=curve, **options)


class StreamVerdicts:
    """One ``Hysteresis`` per stream, fed with Score messages.

    An end of stream forgets the stream's verdict (``end``): the next run of
    the same stream id starts at Not-Head, as a restarted seq does.
    """

    def __init__(self, hold: int = DEFAULT_HOLD) -> None:
        check_hold(hold)
        self.hold = hold
        self._streams: dict[str, Hysteresis] = {}

    def update(self, score: protocol.Score) -> Verdict:
        """The smoothed verdict of ``score``'s stream after it (times are the frame's ``t_capture``)."""
        machine = self._streams.get(score.stream)
        if machine is None:
            machine = self._streams[score.stream] = Hysteresis(self.hold)
        return machine.update(score.seq, score.decision, score.t_capture)

    def end(self, stream: str) -> None:
        self._streams.pop(stream, None)


def lost_at_start(score: protocol.Score) -> int:
    """Frames of ``score``'s stream that never reached the worker before it, given the first score seen of a run.

    Call it with the first score a consumer sees of a stream, or of a new
    run of it (after its end of stream, or when seq went back). A first
    score with seq > 0 has seqs before it whose scores this consumer never
    saw, for one of two reasons: the worker subscribed after the capture
    had started (live mode), so those frames never reached it and were
    never scored: lost; or this consumer started watching a stream that was
    already running, so they were scored, just not seen here: not lost.

    The score tells the two apart while the worker's window of the stream
    is still filling (flag ``warmup``): then ``window`` frames are behind
    it, and when they are consecutive the worker's first frame of this run
    was ``seq - window + 1``. They are when ``window`` is 1 (the flag
    ``gap`` of a window begun above seq 0 is about what came before it),
    or when the score has no ``gap`` flag. The seqs before that first frame
    that the worker does not count in ``dropped`` (every frame it missed
    since its first one: with a window of consecutive frames, all of them
    before it) never reached it, and that count is returned. Without
    ``warmup`` the worker had a full window already, so this consumer
    joined late; with ``gap`` and a longer window the worker's first frame
    cannot be told: both return 0, so nothing is counted that might not
    be lost.
    """
    if protocol.FLAG_WARMUP not in score.flags or (score.window > 1 and protocol.FLAG_GAP in score.flags):
        return 0
    return max(0, score.seq - score.window + 1 - score.dropped)
