"""Users' SSH public keys: what a VM's login user accepts when that user creates the VM."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class SshKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=100, blank=True, help_text="The key's comment, or what you call it.")
    key = models.TextField(help_text="One OpenSSH public key line.")
    fingerprint = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user", "created_at"]
        constraints = [models.UniqueConstraint(fields=["user", "fingerprint"], name="one_key_per_user")]

    def __str__(self) -> str:
        return f"{self.name or 'key'} ({self.fingerprint})"
