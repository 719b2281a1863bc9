"""WSGI entry point (gunicorn flashsend.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flashsend.settings")

application = get_wsgi_application()
