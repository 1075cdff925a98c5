"""The host name Airflow records for a task instance, per process of the native team stack.

In docker-compose every worker is a container with a host name of its own; natively, the team
stack's two Celery workers share one machine. ``[core] hostname_callable`` names this function
there, and each process gets ``FMOPS_HOSTNAME`` (the compose service it stands for), so task
instances say which worker ran them, as they do in compose.
"""

from __future__ import annotations

import os
import socket

HOSTNAME_ENV = "FMOPS_HOSTNAME"


def get_hostname() -> str:
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()
