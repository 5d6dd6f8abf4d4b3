"""`errors.retry`: transient errors are retried a bounded number of times, anything else at once."""

import pytest

from rotmnist import errors


class Flaky:
    """Fails with `error` on its first `failures` calls, then returns how many calls it took."""

    def __init__(self, failures: int, error: type[Exception] = KeyError):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"call {self.calls}")
        return self.calls


def test_retry_returns_the_first_success():
    action = Flaky(failures=2)
    assert errors.retry(action, KeyError, attempts=3, pause=0) == 3


def test_retry_gives_up_after_its_attempts_with_the_last_error():
    action = Flaky(failures=5)
    with pytest.raises(KeyError, match="call 3"):
        errors.retry(action, KeyError, attempts=3, pause=0)
    assert action.calls == 3


def test_retry_lets_other_errors_through_at_once():
    action = Flaky(failures=1, error=ValueError)
    with pytest.raises(ValueError, match="call 1"):
        errors.retry(action, KeyError, attempts=3, pause=0)
    assert action.calls == 1


def test_retry_waits_longer_each_time(monkeypatch):
    waits = []
    monkeypatch.setattr(errors.time, "sleep", waits.append)
    errors.retry(Flaky(failures=3), KeyError, attempts=4, pause=0.5)
    assert waits == [0.5, 1.0, 1.5]
