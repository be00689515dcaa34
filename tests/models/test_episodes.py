"""Head episodes: the verdict's runs of Head, their peaks and best frames, restarts, and episode metrics."""

import math

import numpy as np
import pytest

from models.episodes import END, START, EpisodeTracker, episode_metrics, episodes
from models.verdict import Hysteresis, smooth


def feed_all(tracker, scores, start=0):
    return [(start + i, e) for i, s in enumerate(scores) for e in tracker.feed(start + i, s, (start + i) / 10)]


def test_an_episode_starts_when_the_verdict_turns_and_is_back_dated_to_its_first_frame():
    tracker = EpisodeTracker("p1", 0.5, hold=2)
    scores = [0.1, 0.7, 0.9, 0.8, 0.95, 0.2, 0.1, 0.3]
    events = feed_all(tracker, scores)
    (at_start, start), (at_end, end) = events
    # Announced on the hold-th Head score, dated from the first; ended on the hold-th score below.
    assert (at_start, start.kind, start.first_seq, start.t_first, start.last_seq) == (2, START, 1, 0.1, None)
    assert (start.peak_score, start.peak_seq, start.best_seq) == (0.9, 2, 2)
    assert (at_end, end.kind, end.first_seq, end.last_seq, end.t_last) == (6, END, 1, 4, 0.4)
    assert (end.peak_score, end.peak_seq, end.best_seq) == (0.95, 4, 4)
    assert not tracker.open


def test_episodes_agree_frame_for_frame_with_the_shown_verdict():
    rng = np.random.default_rng(3)
    scores = np.clip(np.repeat(rng.random(40), 5) + rng.normal(0, 0.15, 200), 0, 1)
    for hold in (1, 2, 4):
        shown = smooth(scores >= 0.5, hold)
        in_episode = np.zeros(len(scores), bool)
        for e in episodes(range(len(scores)), scores, 0.5, hold):
            assert scores[e.peak_seq] == scores[e.first_seq:e.last_seq + 1].max()
            assert scores[e.last_seq] >= 0.5 and scores[e.first_seq] >= 0.5
            in_episode[e.first_seq:e.last_seq + 1] = True
        # The verdict turns hold - 1 frames after an episode's edges (back-dating); shift it back to compare.
        assert np.array_equal(in_episode[:len(scores) - hold + 1], shown[hold - 1:])


def test_a_spike_shorter_than_hold_is_no_episode_and_a_dip_shorter_than_hold_does_not_split_one():
    assert episodes(range(5), [0.1, 0.99, 0.1, 0.1, 0.1], 0.5, hold=2) == []
    (one,) = episodes(range(7), [0.6, 0.7, 0.2, 0.8, 0.6, 0.1, 0.1], 0.5, hold=2)
    assert (one.first_seq, one.last_seq, one.peak_seq) == (0, 4, 3)


def test_the_first_of_equal_peaks_is_the_best_frame():
    (one,) = episodes(range(6), [0.9, 0.9, 0.7, 0.9, 0.0, 0.0], 0.5, hold=2)
    assert one.best_seq == one.peak_seq == 0


def test_warm_up_and_missing_seqs_count_scores_not_frames():
    # seqs 10, 20, 21: the missing seqs between them neither break nor extend the episode.
    (one,) = episodes([3, 10, 20, 21, 40, 41], [0.9, 0.8, 0.7, 0.1, 0.2, 0.3], 0.5, hold=2,
                      times=[0.3, 1.0, 2.0, 2.1, 4.0, 4.1])
    assert (one.first_seq, one.last_seq, one.t_first, one.t_last) == (3, 20, 0.3, 2.0)


def test_a_seq_that_goes_back_ends_the_episode_and_starts_the_stream_over():
    tracker = EpisodeTracker("p1", 0.5, hold=2)
    feed_all(tracker, [0.8, 0.9, 0.9])
    events = tracker.feed(0, 0.9, 5.0)
    assert [(e.kind, e.first_seq, e.last_seq) for e in events] == [(END, 0, 2)]
    # Over again from Not-Head: one more Head score is needed before a new start.
    assert [e.kind for e in tracker.feed(1, 0.9, 5.1)] == [START]


def test_close_ends_an_open_episode_and_nothing_else():
    tracker = EpisodeTracker("p1", 0.5, hold=2)
    assert tracker.close() == []
    feed_all(tracker, [0.9, 0.9, 0.6, 0.1])
    (end,) = tracker.close()
    assert (end.kind, end.first_seq, end.last_seq, end.t_last) == (END, 0, 2, 0.2)
    assert tracker.close() == [] and not tracker.open


def test_the_tracker_uses_the_one_hysteresis():
    tracker = EpisodeTracker("p1", 0.5, hold=3)
    assert isinstance(tracker._verdict, Hysteresis) and tracker._verdict.hold == 3


@pytest.mark.parametrize("args, match", [
    (("", 0.5), "stream"), (("p", 1.5), "threshold"), (("p", 0.5, 0), "hold")])
def test_bad_settings_are_refused_in_one_line(args, match):
    with pytest.raises(Exception, match=match):
        EpisodeTracker(*args)


def test_a_bad_score_is_refused_naming_the_frame():
    with pytest.raises(ValueError, match=r"p1#7 must be a number in \[0, 1\], got nan"):
        EpisodeTracker("p1", 0.5).feed(7, math.nan, None)


def test_metrics_on_hand_made_sequences_with_known_answers():
    labels = [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    scores = [0, 0, .9, .9, .9, .9, .9, 0, 0, 0, 0, 0, 0, 0, .9, .9, 0, 0, 0, 0]
    # Truth: [1..4], [10..12], [17..18]. Predicted (hold 2): [2..6] found (start 1 late, end 2 late);
    # [14..15] overlaps nothing: false; truths 2 and 3 missed.
    m = episode_metrics(labels, scores, 0.5, hold=2)
    assert m == {"truth": 3, "predicted": 2, "found": 1, "missed": 2, "false": 1, "split": 0,
                 "start_delay": 1.0, "end_delay": 2.0}


def test_metrics_count_a_split_episode_once_and_never_cross_a_scan():
    labels = [1, 1, 1, 1, 1, 1, 1, 1] + [1, 1, 0, 0]
    scores = [.9, .9, 0, 0, .9, .9, .9, .9] + [.9, .9, 0, 0]
    groups = ["a"] * 8 + ["b"] * 4
    m = episode_metrics(labels, scores, 0.5, hold=2, groups=groups)
    # Scan a: one truth [0..7] found twice ([0..1], [4..7]); scan b: [0..1] found on time.
    assert (m["truth"], m["predicted"], m["found"], m["split"], m["false"]) == (2, 3, 2, 1, 0)
    assert m["start_delay"] == 0.0 and m["end_delay"] == 0.0
    # As one scan the truth would run on into b's frames: groups matter.
    assert episode_metrics(labels, scores, 0.5, hold=2)["truth"] == 1


def test_metrics_with_nothing_found_give_nan_delays_and_refuse_bad_shapes():
    m = episode_metrics([1, 1, 0], [0, 0, 0], 0.5)
    assert (m["found"], m["missed"]) == (0, 1) and math.isnan(m["start_delay"])
    with pytest.raises(ValueError, match="one length"):
        episode_metrics([1, 0], [0.1], 0.5)
    with pytest.raises(ValueError, match="contiguous"):
        episode_metrics([1, 0, 1], [0.1, 0.1, 0.1], 0.5, groups=["a", "b", "a"])
