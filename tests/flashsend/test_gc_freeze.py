"""Long-lived objects of web and worker processes are kept out of the collector's way."""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from flashsend.celery import _prepare_worker

GUNICORN_CONF = Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py"


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # leave the test process as it was


def _gunicorn_conf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gunicorn_conf", GUNICORN_CONF)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_web_worker_freezes_the_app_then_what_the_first_requests_built(unfrozen: None) -> None:
    conf = _gunicorn_conf()
    conf.post_worker_init(None)
    after_init = gc.get_freeze_count()
    assert after_init > 0
    lazily_built = [[n] for n in range(1000)]  # what first requests leave behind (tracked)
    for _ in range(conf.FREEZE_AFTER_REQUESTS - 1):
        conf.post_request(None, None, None, None)
    assert gc.get_freeze_count() == after_init
    conf.post_request(None, None, None, None)
    assert gc.get_freeze_count() >= after_init + len(lazily_built)
    conf.post_request(None, None, None, None)  # once only
    assert gc.get_freeze_count() >= after_init + len(lazily_built)


def test_a_starting_celery_worker_freezes_what_it_loaded(unfrozen: None) -> None:
    _prepare_worker()
    assert gc.get_freeze_count() > 0
