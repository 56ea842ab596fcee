"""How the panel reaches a host: its model row turned into driver configuration."""
from django.conf import settings

from drivers.ipmi import BmcTarget
from drivers.ssh import SSHTarget
from hosts.models import CpuServer, Host


def ssh_target(host: Host) -> SSHTarget:
    return SSHTarget(
        host=host.address,
        name=host.name,
        user=host.ssh_user,
        port=host.ssh_port,
        identity_file=settings.SSH_IDENTITY_FILE,
        known_hosts_file=settings.SSH_KNOWN_HOSTS_FILE,
        control_dir=settings.SSH_CONTROL_DIR,
        connect_timeout=settings.SSH_CONNECT_TIMEOUT,
    )


def bmc_target(host: CpuServer, timeout: float) -> BmcTarget:
    """A CPU server's BMC, for ipmitool calls of at most `timeout` seconds each."""
    return BmcTarget(host.bmc_address, host.bmc_port, host.bmc_user, host.bmc_password_file, timeout)
