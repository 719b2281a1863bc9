"""The typed environment readers, and start-up with bad and missing configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flashsend import env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("Yes", True), ("off", False), ("0", False)]
)
def test_env_bool(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("FS_TEST_FLAG", raw)
    assert env.env_bool("FS_TEST_FLAG", not expected) is expected


def test_env_bool_rejects_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FS_TEST_FLAG", "maybe")
    with pytest.raises(env.ConfigError, match="FS_TEST_FLAG='maybe' is not a boolean"):
        env.env_bool("FS_TEST_FLAG", False)


def test_env_int_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.env_int("FS_TEST_MISSING", 7) == 7
    monkeypatch.setenv("FS_TEST_N", "12")
    assert env.env_int("FS_TEST_N", 1, maximum=12) == 12
    with pytest.raises(env.ConfigError, match="above the maximum"):
        env.env_int("FS_TEST_N", 1, maximum=11)
    monkeypatch.setenv("FS_TEST_N", "twelve")
    with pytest.raises(env.ConfigError, match="not a whole number"):
        env.env_int("FS_TEST_N", 1)


def test_env_float_and_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FS_TEST_F", "0.5")
    assert env.env_float("FS_TEST_F", 1.0) == 0.5
    monkeypatch.setenv("FS_TEST_F", "half")
    with pytest.raises(env.ConfigError):
        env.env_float("FS_TEST_F", 1.0)
    monkeypatch.setenv("FS_TEST_L", " a, b ,,c ")
    assert env.env_list("FS_TEST_L", []) == ["a", "b", "c"]


def test_env_secret_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    generated = tmp_path / "secret"
    first = env.env_secret("FS_TEST_SECRET", generated_file=generated)
    assert len(first) >= 32
    assert generated.stat().st_mode & 0o777 == 0o600
    assert env.env_secret("FS_TEST_SECRET", generated_file=generated) == first
    secret_file = tmp_path / "from-file"
    secret_file.write_text("s" * 40 + "\n")
    monkeypatch.setenv("FS_TEST_SECRET_FILE", str(secret_file))
    assert env.env_secret("FS_TEST_SECRET", generated_file=generated) == "s" * 40
    monkeypatch.setenv("FS_TEST_SECRET", "x" * 40)
    with pytest.raises(env.ConfigError, match="not both"):
        env.env_secret("FS_TEST_SECRET", generated_file=generated)
    monkeypatch.delenv("FS_TEST_SECRET_FILE")
    monkeypatch.setenv("FS_TEST_SECRET", "short")
    with pytest.raises(env.ConfigError, match="at least 32"):
        env.env_secret("FS_TEST_SECRET", generated_file=generated)


def test_a_secret_file_being_written_by_another_process_is_waited_for(tmp_path: Path) -> None:
    """Web, worker and beat start together: a process that finds the file created but
    not yet written reads the secret once it is there, not the empty file."""
    generated = tmp_path / "secret"
    generated.touch()  # the winner has created it and not written yet
    writer = threading.Timer(0.2, generated.write_text, args=("w" * 48,))
    writer.start()
    try:
        assert env.env_secret("FS_TEST_SECRET", generated_file=generated) == "w" * 48
    finally:
        writer.join()


def _clean_env(var_dir: Path, **extra: str) -> dict[str, str]:
    keep = {"PATH", "HOME", "LANG", "PYTHONPATH"}
    environ = {k: v for k, v in os.environ.items() if k in keep}
    environ["FLASHSEND_VAR_DIR"] = str(var_dir)
    environ["FLASHSEND_ENV_FILE"] = str(var_dir / "no.env")
    environ.update(extra)
    return environ


def _manage(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own manage.py with fixed arguments
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SHELL = ("shell", "--no-imports", "-c")

REPORT = (
    "from django.conf import settings; from django.db import connection; "
    "c = connection.cursor(); c.execute('PRAGMA journal_mode'); "
    "print(settings.DATABASES['default']['ENGINE'], settings.CELERY_BROKER_URL, "
    "settings.CACHES['default']['BACKEND'], c.fetchone()[0], settings.DEBUG, "
    "settings.SECRET_KEY[:12])"
)


def test_embedded_defaults_with_nothing_configured(tmp_path: Path) -> None:
    environ = _clean_env(tmp_path)
    first = _manage(environ, "shell", "--no-imports", "-c", REPORT)
    assert first.returncode == 0, first.stderr
    engine, broker, cache, journal, debug, secret = first.stdout.split()
    assert engine == "django.db.backends.sqlite3"
    assert broker == "filesystem://"
    assert cache.endswith("LocMemCache")
    assert journal == "wal"
    assert debug == "False"
    assert (tmp_path / "flashsend.sqlite3").exists()
    assert (tmp_path / "broker" / "queue").is_dir()
    # The generated secret is kept: a restart sees the same one.
    second = _manage(environ, "shell", "--no-imports", "-c", REPORT)
    assert second.stdout.split()[-1] == secret


def test_bad_value_stops_startup_with_a_clear_message(tmp_path: Path) -> None:
    result = _manage(_clean_env(tmp_path, DEBUG="maybe"), "check")
    assert result.returncode != 0
    assert "DEBUG='maybe' is not a boolean" in result.stderr


def test_bad_database_url_stops_startup(tmp_path: Path) -> None:
    result = _manage(_clean_env(tmp_path, DATABASE_URL="nosuchdb://x"), "check")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_jwt_lifetime_comes_from_the_environment(tmp_path: Path) -> None:
    environ = _clean_env(tmp_path, JWT_EXPIRATION_HOURS="2")
    code = "from django.conf import settings; print(settings.SIMPLE_JWT['ACCESS_TOKEN_LIFETIME'])"
    result = _manage(environ, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2:00:00"


def test_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("JWT_EXPIRATION_HOURS=3\n")
    environ = _clean_env(tmp_path, FLASHSEND_ENV_FILE=str(env_file))
    code = "from django.conf import settings; print(settings.JWT_EXPIRATION_HOURS)"
    result = _manage(environ, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3.0"


POOL = (
    "from django.conf import settings; d = settings.DATABASES['default']; "
    "print(d['ENGINE'], d['CONN_MAX_AGE'], d.get('OPTIONS', {}).get('pool'))"
)


def test_postgresql_uses_a_connection_pool_by_default(tmp_path: Path) -> None:
    url = "postgres://flashsend:secret@db.example:5432/flashsend"
    result = _manage(_clean_env(tmp_path, DATABASE_URL=url, DB_POOL_MAX_SIZE="24"), *SHELL, POOL)
    assert result.returncode == 0, result.stderr
    engine, max_age, pool = result.stdout.split(" ", 2)
    assert engine == "django.db.backends.postgresql"
    assert max_age == "0"
    assert "'max_size': 24" in pool
    without = _manage(_clean_env(tmp_path, DATABASE_URL=url, DB_POOL="0"), *SHELL, POOL)
    assert without.stdout.split(" ", 2)[2].strip() == "None"


# Each transaction reads, then writes: the pattern that makes SQLite answer "database
# is locked" at once when two deferred transactions both try to upgrade to writing.
WRITER = """
from django.db import transaction
from accounts.models import User
from notifications.models import Notification as N
owner = User.objects.get(email="w@example.com")
for i in range(150):
    with transaction.atomic():
        N.objects.filter(owner=owner).count()
        row = N.objects.create(owner=owner, channel="sms", recipient="+14155552671", body=str(i))
        N.objects.filter(id=row.id).update(status="sent")
print("ok")
"""


def test_embedded_sqlite_takes_concurrent_writers(tmp_path: Path) -> None:
    """Web, worker and beat share one SQLite file without "database is locked"."""
    environ = _clean_env(tmp_path)
    migrate = _manage(environ, "migrate", "--noinput")
    assert migrate.returncode == 0, migrate.stderr
    _manage(
        environ,
        *SHELL,
        "from accounts.models import User; User.objects.create(email='w@example.com')",
    )
    writers = [
        subprocess.Popen(  # noqa: S603 - our own manage.py with fixed arguments
            [sys.executable, "manage.py", *SHELL, WRITER],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [writer.communicate(timeout=120) for writer in writers]
    for (stdout, stderr), writer in zip(outputs, writers, strict=True):
        assert writer.returncode == 0, stderr
        assert stdout.strip() == "ok"
    sent = (
        "from notifications.models import Notification as N; "
        "print(N.objects.filter(status='sent').count())"
    )
    assert _manage(environ, *SHELL, sent).stdout.strip() == "450"


KEY_LOOKUP = """
from accounts.models import User
from apikeys.services import apikey_authenticate, apikey_create
user = User.objects.create(email="k@example.com")
_, raw = apikey_create(user=user, name="k")
first = apikey_authenticate(raw=raw)
second = apikey_authenticate(raw=raw)
print(second.last_used_at == first.last_used_at, type(second.last_used_at).__name__,
      second.last_used_at.tzinfo is not None, second.user.is_active, second.user.email)
"""


def test_api_key_lookup_converts_sqlite_values(tmp_path: Path) -> None:
    """The precompiled key lookup applies the backend's converters (text datetimes)."""
    environ = _clean_env(tmp_path)
    assert _manage(environ, "migrate", "--noinput").returncode == 0
    result = _manage(environ, *SHELL, KEY_LOOKUP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "datetime", "True", "True", "k@example.com"]


EMBEDDED_SEND = """
import time
from accounts.models import User
from notifications.models import Notification
from notifications.publishing import background_publisher
from notifications.services import notification_send
user = User.objects.create(email="s@example.com")
row = notification_send(owner=user, api_key=None, channel="sms", to="+14155552671", body="hi")
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    if Notification.objects.get(pk=row.pk).published_at is not None:
        break
    time.sleep(0.1)
background_publisher.stop()
print(Notification.objects.get(pk=row.pk).published_at is not None)
"""


def test_embedded_default_publishes_from_the_api_thread(tmp_path: Path) -> None:
    """SQLite and the filesystem broker: the publishing thread's other path."""
    environ = _clean_env(tmp_path)
    assert _manage(environ, "migrate", "--noinput").returncode == 0
    result = _manage(environ, *SHELL, EMBEDDED_SEND)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]
    assert list((tmp_path / "broker" / "queue").iterdir())  # the task's message file
