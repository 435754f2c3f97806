"""Progress without a terminal (issue 24, item 5): under nohup or in a CI log a scan printed nothing for ten minutes,
because rich's bars draw only on a terminal. There, plain lines say how far each stage is, at a bounded rate."""

from __future__ import annotations

from biasaudit.cli.console import plain_progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_long_stage_prints_a_line_every_interval_and_its_end_with_rate_and_eta():
    lines: list[str] = []
    clock = Clock()
    update = plain_progress(lines.append, every=30.0, clock=clock)
    for step in range(0, 101):  # one batch a second, 100 batches
        clock.now = float(step)
        update("scan", step, 100)
    assert lines == [
        "scan: 30/100 (30%), 1.0/s, ETA 70 s\n",
        "scan: 60/100 (60%), 1.0/s, ETA 40 s\n",
        "scan: 90/100 (90%), 1.0/s, ETA 10 s\n",
        "scan: 100/100 (100%), 1.0/s\n",
    ]


def test_a_short_stage_prints_nothing_and_stages_are_timed_apart():
    lines: list[str] = []
    clock = Clock()
    update = plain_progress(lines.append, every=30.0, clock=clock)
    for step in range(11):  # 10 s: shorter than the interval
        clock.now = float(step)
        update("probe", step, 10)
    clock.now = 100.0
    update("train", 0, None)
    clock.now = 140.0
    update("train", 8, None, "epoch 2 loss 0.31")
    assert lines == ["train: 8, 0.2/s, epoch 2 loss 0.31\n"]
