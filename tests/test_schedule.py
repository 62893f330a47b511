"""PlateauSchedule: the published early-stopping schedule (patience, phases, epoch cap, exact resume)."""

import pytest

from helper.schedule import CONTINUE, DECAY, STOP, PlateauSchedule


def _run(schedule: PlateauSchedule, accs: list[float]) -> list[str]:
    return [schedule.update(a).action for a in accs]


def test_patience_then_decay_then_stop_after_three_phases():
    s = PlateauSchedule(0.05, patience=2, decay_rate=0.1, phases=3, max_epochs=100)
    actions = _run(s, [10, 20, 15, 15])  # best at 2, two epochs without improvement
    assert actions == [CONTINUE, CONTINUE, CONTINUE, DECAY]
    assert s.phase == 1 and s.lr == pytest.approx(0.005) and s.epochs_since_best == 0 and s.best_epoch == 2
    assert _run(s, [19, 18]) == [CONTINUE, DECAY]
    assert s.lr == pytest.approx(0.0005)
    assert _run(s, [30, 1, 1]) == [CONTINUE, CONTINUE, STOP]  # the plateau that ends the third phase ends the run
    assert s.phase == 2 and s.decays == 2 and s.best_acc == 30 and s.best_epoch == 7


def test_lr_decay_times_counts_phases():
    lrs = []
    s = PlateauSchedule(1.0, patience=1, decay_rate=0.5, phases=3, max_epochs=1000)
    while True:
        lrs.append(s.lr)
        if s.update(0.0).action == STOP:
            break
    assert sorted(set(lrs), reverse=True) == [1.0, 0.5, 0.25]  # exactly three learning rates


def test_one_phase_never_decays():
    s = PlateauSchedule(0.1, patience=1, decay_rate=0.1, phases=1, max_epochs=50)
    assert _run(s, [5, 4]) == [CONTINUE, STOP]
    assert s.lr == 0.1


def test_epoch_cap_stops_even_when_improving_and_takes_precedence():
    s = PlateauSchedule(0.1, patience=3, decay_rate=0.1, phases=3, max_epochs=4)
    assert _run(s, [1, 2, 3, 4]) == [CONTINUE, CONTINUE, CONTINUE, STOP]
    s = PlateauSchedule(0.1, patience=1, decay_rate=0.1, phases=3, max_epochs=2)
    assert _run(s, [5, 1]) == [CONTINUE, STOP]  # cap reached in the same epoch as a plateau: stop, not decay
    assert s.phase == 0


def test_improvement_is_strict_and_reports_improved():
    s = PlateauSchedule(0.1, patience=5, decay_rate=0.1, phases=3, max_epochs=50)
    assert s.update(10).improved and not s.update(10).improved and s.update(10.5).improved
    assert s.best_epoch == 3


def test_state_dict_resumes_exactly():
    accs = [3, 5, 4, 4, 6, 2, 2, 2, 7, 1, 1, 1, 1]
    full = PlateauSchedule(0.05, patience=2, decay_rate=0.1, phases=3, max_epochs=40)
    expected = _run(full, accs)
    first = PlateauSchedule(0.05, patience=2, decay_rate=0.1, phases=3, max_epochs=40)
    head = _run(first, accs[:6])
    resumed = PlateauSchedule(0.05, patience=2, decay_rate=0.1, phases=3, max_epochs=40)
    resumed.load_state_dict(first.state_dict())
    assert head + _run(resumed, accs[6:]) == expected
    assert resumed.state_dict() == full.state_dict() and resumed.lr == full.lr


@pytest.mark.parametrize("kwargs", [dict(phases=0), dict(max_epochs=0), dict(patience=-1), dict(learning_rate=0.0)])
def test_invalid_schedules_are_rejected(kwargs):
    args = dict(learning_rate=0.1, patience=1, decay_rate=0.1, phases=3, max_epochs=10) | kwargs
    with pytest.raises(ValueError):
        PlateauSchedule(**args)
