"""The queues and exchanges exist on RabbitMQ with the arguments the code declares."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.management import call_command
from kombu import Connection

from flashsend import topology

pytestmark = [pytest.mark.services, pytest.mark.django_db]

RABBITMQCTL = shutil.which("rabbitmqctl")


def _rabbitmqctl(*args: str) -> str:
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl is not installed here; it reads queue arguments back")
    result = subprocess.run(  # noqa: S603 - fixed arguments to the local broker's CLI
        [RABBITMQCTL, "--quiet", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def _queues(vhost: str) -> dict[str, dict[str, Any]]:
    raw = _rabbitmqctl(
        "list_queues", "-p", vhost, "name", "arguments", "type", "--formatter", "json"
    )
    rows = json.loads(raw or "[]")
    # rabbitmqctl lists arguments as [name, AMQP type, value] triples.
    return {
        row["name"]: {**row, "arguments": {arg[0]: arg[2] for arg in row["arguments"]}}
        for row in rows
    }


def _vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return "/" if path in ("", "/") else path[1:]


def test_setup_command_declares_every_queue_with_dead_lettering() -> None:
    call_command("flashsend_setup", verbosity=0)
    queues = _queues(_vhost_of(str(settings.CELERY_BROKER_URL)))
    for name in (*topology.WORK_QUEUES, topology.DEFAULT_QUEUE):
        assert name in queues, name
        assert queues[name]["arguments"]["x-dead-letter-exchange"] == "flashsend.dlx"
        assert queues[name]["type"] == "classic"
    assert queues["flashsend.dead"]["type"] == "classic"


def test_declaring_twice_is_harmless() -> None:
    call_command("flashsend_setup", verbosity=0)
    call_command("flashsend_setup", verbosity=0)


@pytest.fixture
def scratch_vhost() -> Iterator[str]:
    name = f"flashsend_quorum_{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


def test_quorum_queues_by_one_setting(scratch_vhost: str) -> None:
    parts = urlsplit(str(settings.CELERY_BROKER_URL))
    url = parts._replace(path=f"/{scratch_vhost}").geturl()
    with Connection(url) as connection:
        topology.declare_all(connection, quorum=True)
    queues = _queues(scratch_vhost)
    for name in (*topology.WORK_QUEUES, topology.DEFAULT_QUEUE):
        assert queues[name]["type"] == "quorum", name
        assert queues[name]["arguments"]["x-dead-letter-exchange"] == "flashsend.dlx"
    assert queues["flashsend.dead"]["type"] == "quorum"
    # The dead-letter exchange routes anything into flashsend.dead.
    bindings = json.loads(
        _rabbitmqctl(
            "list_bindings",
            "-p",
            scratch_vhost,
            "source_name",
            "destination_name",
            "routing_key",
            "--formatter",
            "json",
        )
    )
    assert {
        "source_name": "flashsend.dlx",
        "destination_name": "flashsend.dead",
        "routing_key": "#",
    } in bindings
