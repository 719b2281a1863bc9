from django.apps import AppConfig


class FlashSendConfig(AppConfig):
    name = "flashsend"
    verbose_name = "FlashSend"
