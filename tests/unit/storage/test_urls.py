"""Store URLs: PostgreSQL told apart from files and servers; passwords never shown."""

from __future__ import annotations

import pytest

from rotmnist.storage.urls import is_postgres, redact


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h/db", True),
        ("PostgreSQL+psycopg://u@h/db", True),
        ("postgres://u@h/db", False),
        ("sqlite:////srv/requests.db", False),
        ("journal:/srv/journal.log", False),
        ("http://127.0.0.1:5000", False),
    ],
)
def test_is_postgres(url, expected):
    assert is_postgres(url) is expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://rotmnist:secret@db:5432/optuna", "postgresql://rotmnist:***@db:5432/optuna"),
        ("postgresql+psycopg://u:p%40ss@db/x", "postgresql+psycopg://u:***@db/x"),
        ("postgresql://u:p@ss@word@db/x", "postgresql://u:***@db/x"),  # an unescaped "@" in the password
        ("https://alice:hunter2@mlflow.example.org", "https://alice:***@mlflow.example.org"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("journal:/srv/journal.log", "journal:/srv/journal.log"),
        ("optuna/journal.log", "optuna/journal.log"),
        ("databricks", "databricks"),
    ],
)
def test_redact_hides_the_password_only(url, shown):
    assert redact(url) == shown
