"""The smoothed verdict: hysteresis over raw decisions, back-dated changes, restarts."""

import numpy as np
import pytest

from models.errors import ConfigError
from models.verdict import DEFAULT_HOLD, Hysteresis, flips, smooth


def feed(machine, decisions, start=0):
    return [machine.update(start + i, d, float(start + i) / 10) for i, d in enumerate(decisions)]


def test_turns_head_after_hold_decisions_and_back_after_hold_below():
    verdicts = feed(Hysteresis(3), [1, 1, 1, 1, 0, 0, 1, 0, 0, 0])
    assert [v.head for v in verdicts] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0]
    assert [v.changed for v in verdicts] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    assert [v.pending for v in verdicts] == [1, 2, 0, 0, 1, 2, 0, 1, 2, 0]


def test_a_change_is_back_dated_to_the_first_decision_of_its_run():
    machine = Hysteresis(3)
    verdicts = feed(machine, [0, 0, 1, 1, 1, 1, 0, 0, 0])
    turned_on = verdicts[4]
    assert turned_on.changed and turned_on.head
    assert (turned_on.since_seq, turned_on.since_t) == (2, 0.2)
    assert verdicts[5].since_seq == 2
    turned_off = verdicts[8]
    assert turned_off.changed and not turned_off.head and turned_off.since_seq == 6


def test_a_short_blip_never_shows():
    assert not smooth([0, 1, 1, 0, 1, 0, 0], hold=3).any()
    assert smooth([1, 1, 1, 0, 1, 0, 1, 1], hold=3)[2:].all()


def test_hold_one_is_the_raw_decision():
    decisions = np.random.default_rng(0).random(200) > 0.5
    assert np.array_equal(smooth(decisions, hold=1), decisions)


def test_smoothing_never_flips_more_than_the_raw_decisions():
    decisions = np.random.default_rng(1).random(500) > 0.4
    assert flips(smooth(decisions, 3)) < flips(decisions)
    assert flips([]) == 0


def test_a_seq_that_goes_back_starts_the_stream_over():
    machine = Hysteresis(2)
    assert feed(machine, [1, 1, 1])[-1].head
    again = machine.update(0, True, 5.0)
    assert not again.head and again.since_seq == 0 and again.pending == 1


def test_missing_seqs_count_decisions_not_frames():
    machine = Hysteresis(3)
    machine.update(0, True, 0.0)
    machine.update(10, True, 1.0)
    assert machine.update(20, True, 2.0).head


@pytest.mark.parametrize("hold", [0, -1, 1.5, True, 10_000, "3"])
def test_a_bad_hold_is_one_config_error(hold):
    with pytest.raises(ConfigError, match="hold: must be an integer"):
        Hysteresis(hold)


def test_the_default_is_stated():
    assert Hysteresis().hold == DEFAULT_HOLD == 2
