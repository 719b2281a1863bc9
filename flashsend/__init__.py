"""FlashSend: notification delivery over priority queues with retries and failover."""

from flashsend.celery import app as celery_app

__all__ = ["celery_app"]
