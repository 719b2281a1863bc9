"""Idempotent start-up set-up that `make run` and the deploy files call after migrate."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from flashsend import periodic, topology
from flashsend.celery import app as celery_app


class Command(BaseCommand):
    help = "Declare the broker topology and register the periodic tasks. Safe to run again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--skip-broker", action="store_true", help="Do not declare queues and exchanges."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["skip_broker"]:
            with celery_app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=3)
                names = topology.declare_all(connection, quorum=settings.RABBITMQ_QUORUM_QUEUES)
            kind = "quorum" if settings.RABBITMQ_QUORUM_QUEUES else "classic"
            self.stdout.write(f"Declared {len(names)} {kind} queues: {', '.join(names)}")
        for line in periodic.register_periodic_tasks():
            self.stdout.write(line)
        self.stdout.write("FlashSend set-up complete.")
