from django.apps import AppConfig


class SshKeysConfig(AppConfig):
    name = "sshkeys"
    verbose_name = "SSH keys"
