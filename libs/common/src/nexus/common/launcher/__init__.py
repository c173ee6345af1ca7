"""The whole platform on one machine (`nexus up`): embedded NATS, every installed service, the
gateway, each a child process that is restarted when it exits and stopped in order.

See docs/adr/0016-supervised-launcher.md.
"""

from nexus.common.launcher._files import (
    RunInfo,
    admin_key_path,
    read_run_file,
    remove_run_file,
    running_platform,
    save_admin_key,
    service_key,
    signing_key,
)
from nexus.common.launcher._platform import (
    GATEWAY,
    NATS,
    Child,
    Platform,
    gateway_installed,
    installed_services,
)
from nexus.common.launcher._supervisor import Backoff, Supervised, Supervisor, describe_exit

__all__ = [
    "GATEWAY",
    "NATS",
    "Backoff",
    "Child",
    "Platform",
    "RunInfo",
    "Supervised",
    "Supervisor",
    "admin_key_path",
    "describe_exit",
    "gateway_installed",
    "installed_services",
    "read_run_file",
    "remove_run_file",
    "running_platform",
    "save_admin_key",
    "service_key",
    "signing_key",
]
