"""The Celery application's own configuration."""

from __future__ import annotations

from celery import signals

from flashsend.celery import app


def test_a_starting_worker_finds_no_deprecated_settings() -> None:
    app.finalize()  # as the worker's blueprint has done by then
    # The worker checks right after this signal and would log a warning per setting.
    signals.celeryd_after_setup.send(sender="test@localhost", instance=None, conf=app.conf)
    assert not app.conf.deprecated_settings
    assert app.conf.task_serializer == "json"  # the namespaced settings still apply
