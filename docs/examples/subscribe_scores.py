"""Print every score of one stream, from the worker's scores socket (docs/protocol.md, section 10).

    python subscribe_scores.py tcp://127.0.0.1:5556 probe1

Needs pyzmq and msgpack only. Prints "worker ready" once the worker scores, the moment to start a lossless capture.
"""
import sys

import msgpack
import zmq

address, stream = sys.argv[1], sys.argv[2]
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.SUBSCRIBE, stream.encode() + b"\0")  # this stream: its frames, scores and end
sock.setsockopt(zmq.SUBSCRIBE, b"_worker\0")  # second: once a _worker message comes, both are in place
sock.connect(address)
ready = False
while True:
    topic, _, body = sock.recv().partition(b"\0")
    msg = msgpack.unpackb(body)
    if msg["type"] == "heartbeat" and "loading" not in msg["stats"] and not ready:
        ready = True
        print("worker ready", flush=True)
    elif msg["type"] == "score":
        print(msg["seq"], msg["score"], "Head" if msg["decision"] else "Not-Head", ",".join(msg["flags"]), flush=True)
    elif msg["type"] == "end_of_stream":
        break
