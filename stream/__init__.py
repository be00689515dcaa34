"""The live pipeline as a library: a capture publishes frames, a worker scores them, consumers read the scores.

``protocol`` is the wire format (pure), ``net`` the ZeroMQ sockets and the
receiving end every consumer uses (``Inbox``, ``Subscriber``), ``keys`` the
CURVE keys; ``sources`` the device and video-file sources, ``capture`` the
process that publishes them, ``worker`` the one that scores them, ``watch``
and ``record`` the consumers' state and loops, ``stats`` their small
counters; ``supervise`` starts and watches child processes and ``run``
wires the whole pipeline with it. Settings are frozen dataclasses; nothing
here parses flags or draws (``tools`` does both), and nothing imports
``train``.
"""
