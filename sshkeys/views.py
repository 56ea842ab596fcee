"""A user's SSH public keys: every VM the user creates from an image accepts them."""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import FormView

from sshkeys.models import SshKey
from sshkeys.services import add_key
from sshkeys.validation import parse_key


class KeyForm(forms.Form):
    key = forms.CharField(label="Public key", widget=forms.Textarea(attrs={"rows": 3, "class": "form-control"}),
                          help_text="One line, as in ~/.ssh/id_ed25519.pub.")

    def clean_key(self) -> str:
        return parse_key(self.cleaned_data["key"]).line


class SshKeysView(LoginRequiredMixin, FormView):
    form_class = KeyForm
    template_name = "sshkeys/keys.html"

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {"keys": SshKey.objects.filter(user=self.request.user)}

    def form_valid(self, form):
        key, created = add_key(self.request.user, form.cleaned_data["key"])
        if not created:
            form.add_error("key", f"you have this key already ({key.fingerprint})")
            return self.form_invalid(form)
        messages.success(self.request, f"key {key.fingerprint} added: VMs you create from now on accept it")
        return redirect("ssh-keys")


class SshKeyDeleteView(LoginRequiredMixin, View):
    def post(self, request, pk: int):
        key = get_object_or_404(SshKey, pk=pk, user=request.user)  # another user's key: 404
        key.delete()
        messages.success(request, f"key {key.fingerprint} removed (VMs made with it keep it)")
        return redirect("ssh-keys")


