"""Load shapes as pure functions of elapsed time: steady, step ramp, and a 10× spike.

Each returns ``(users, spawn_rate)`` while the test runs and ``None`` when it is over, which is what a
Locust ``LoadTestShape.tick`` returns; ``locustfile.py`` wraps them, and tests check them without
importing Locust.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("steady", "step", "spike")


@dataclass(frozen=True)
class ShapeParams:
    users: int = 16  # steady users; the step ramp's last step; the spike's peak
    duration_s: float = 60.0
    steps: int = 4  # step ramp: users grow by users/steps every duration/steps
    spike_factor: int = 10  # spike: baseline = users / spike_factor
    spike_start: float = 0.3  # spike: fraction of the run spent at baseline before the spike
    spike_length: float = 0.4  # spike: fraction of the run spent at the peak

    def spike_window(self) -> tuple[float, float]:
        start = self.duration_s * self.spike_start
        return start, start + self.duration_s * self.spike_length

    def baseline_users(self) -> int:
        return max(1, round(self.users / self.spike_factor))


def tick(shape: str, elapsed_s: float, p: ShapeParams) -> tuple[int, float] | None:
    if elapsed_s >= p.duration_s:
        return None
    if shape == "steady":
        return p.users, float(p.users)  # all users within a second
    if shape == "step":
        step_len = p.duration_s / p.steps
        step = min(p.steps, int(elapsed_s // step_len) + 1)
        users = max(1, round(p.users * step / p.steps))
        return users, float(users)
    if shape == "spike":
        start, end = p.spike_window()
        if start <= elapsed_s < end:
            return p.users, float(p.users)  # the whole spike arrives within about a second
        return p.baseline_users(), float(p.users)
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
