"""Progress output: plain lines every N % or N seconds when the stream is not a terminal."""

import io

from utils.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_every_ten_percent_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(desc="epoch 1/2", total=25, unit="step", stream=out, clock=clock)
    for _ in range(25):
        clock.now += 1.0
        bar.set_postfix(loss="0.5")
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    # 10 % of 25 is 2.5 steps: lines at 3, 5, 8, 10, 13, 15, 18, 20, 23, 25 steps; none at close.
    assert [int(line.split(":")[1].split("/")[0]) for line in lines] == [
        3, 5, 8, 10, 13, 15, 18, 20, 23, 25
    ]  # fmt: skip
    assert lines[-1] == "epoch 1/2: 25/25 step (100 %), 25.0 s, 1 step/s, loss=0.5"
    assert "\r" not in out.getvalue()


def test_plain_lines_every_n_seconds_without_a_total_and_final_line_on_close():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(desc="rollout", unit="batch", every_seconds=60, stream=out, clock=clock)
    for _ in range(5):
        clock.now += 25.0
        bar.update()
    assert out.getvalue().splitlines() == [
        "rollout: 3 batch, 75.0 s, 0.04 batch/s",
    ]
    bar.close()
    assert out.getvalue().splitlines()[-1] == "rollout: 5 batch, 125.0 s, 0.04 batch/s"


def test_resumed_count_and_iteration():
    out = io.StringIO()
    bar = PlainProgress(range(4), desc="x", initial=6, total=10, stream=out, clock=Clock())
    assert list(bar) == [0, 1, 2, 3]
    assert out.getvalue().splitlines()[-1].startswith("x: 10/10 it (100 %)")


def test_progress_bar_is_plain_off_a_terminal_and_silent_when_disabled():
    out = io.StringIO()
    assert isinstance(progress_bar(range(3), "a", stream=out), PlainProgress)
    quiet = progress_bar(range(3), "a", enabled=False, stream=out)
    assert list(quiet) == [0, 1, 2] and out.getvalue() == ""
