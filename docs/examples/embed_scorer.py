"""Score a video file inside your own program with the worker's own scorer: no sockets, no processes.

    python embed_scorer.py model.fhb clip.mp4

Run from the fetalhead checkout (or with it installed). The scores equal a worker's for the same frames.
"""
import sys
import time

import cv2

from models.bundle import load
from stream.protocol import frame_message
from stream.worker import Scorer

bundle = load(sys.argv[1])  # rebuilt from the bundle's own config
scorer = Scorer(bundle.runtime(), bundle.threshold, bundle.model_id)
video = cv2.VideoCapture(sys.argv[2])
seq = 0
while True:
    ok, image = video.read()  # uint8 BGR (H, W, 3), as a capture sends it
    if not ok:
        break
    # One frame at a time here; a list of frames of several streams is scored as one batch.
    for score in scorer.score([frame_message("clip", seq, image)], time.time()):
        print(score.seq, score.score, "Head" if score.decision else "Not-Head", ",".join(score.flags), flush=True)
    seq += 1
