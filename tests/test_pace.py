"""The shared rate limit: slots 1/rate apart by the database's clock, however many processes
take them at once (SQLite and PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from newsletter.pace import Pace
from newsletter.store import create_engine


class Slept:
    def __init__(self):
        self.total = 0.0

    def __call__(self, seconds: float) -> None:
        self.total += seconds  # no real waiting: the slots are what the database hands out


def test_slots_are_one_interval_apart_from_the_first_and_a_wait_moves_them_for_everyone(subs):
    pace = Pace(subs.engine, "resend", 4.0, sleep=Slept())
    other = Pace(subs.engine, "resend", 4.0, sleep=Slept())  # another process's
    slots = [p.take() for p in (pace, other, pace, other, pace)]
    gaps = [round(b - a, 6) for a, b in zip(slots, slots[1:])]
    assert gaps == [0.25] * 4, "one request per interval, from the first on: no burst, no slow start"
    pace.defer(slots[-1], 3.0)  # a 429's retry-after, counted from when that request started
    assert round(other.take() - slots[-1], 6) == 3.0
    assert round(Pace(subs.engine, "smtp", 4.0, sleep=Slept()).take() - slots[-1], 3) < 1.0, \
        "each provider has a limit of its own"


@pytest.mark.parametrize("processes", [4])
def test_processes_taking_slots_at_once_each_get_their_own(db_url, subs, processes):
    """Four processes, 25 slots each, as fast as they can: 100 distinct slots, 1/rate apart."""
    code = ("import sys; from newsletter.pace import Pace; from newsletter.store import create_engine\n"
            "p = Pace(create_engine(sys.argv[1]), 'resend', 50.0, sleep=lambda s: None)\n"
            "print(*[repr(p.take()) for _ in range(25)])")
    children = [subprocess.Popen([sys.executable, "-c", code, db_url], stdout=subprocess.PIPE, text=True)
                for _ in range(processes)]
    slots = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        slots += [float(x) for x in out.split()]
    slots.sort()
    assert len(slots) == len(set(slots)) == 100
    assert min(round(b - a, 6) for a, b in zip(slots, slots[1:])) == 0.02


def test_threads_of_one_process_share_it_too(subs, db_url):
    engine = create_engine(db_url)
    taken: list[float] = []
    pace = Pace(engine, "resend", 100.0, sleep=lambda s: None)

    def take() -> None:
        for _ in range(10):
            taken.append(pace.take())
    threads = [threading.Thread(target=take) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    engine.dispose()
    taken.sort()
    assert len(set(taken)) == 30 and min(round(b - a, 6) for a, b in zip(taken, taken[1:])) == 0.01
