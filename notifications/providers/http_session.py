"""Read the process environment into a requests session once, not on every call."""

from __future__ import annotations

import os

import requests
from requests.utils import get_environ_proxies


def read_environment_once(session: requests.Session, url: str) -> None:
    """Settle proxies and the CA bundle from the environment now, then stop reading it.

    With ``trust_env`` on, requests scans the whole of ``os.environ`` for proxy
    variables on every request: about half a millisecond of CPU per provider call,
    as much as the rest of the HTTP exchange on loopback. The environment of a
    running worker does not change, so the answer is taken once, for the vendor's
    host: HTTPS_PROXY / NO_PROXY and REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE keep working.
    """
    session.proxies.update(get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False
