"""A notification target as its owner fills it in: only the kinds the owner may hear of are offered."""
from __future__ import annotations

from typing import Any

from django import forms

from notifications.choices import SUBSCRIBABLE_KINDS, VM_KINDS, EventKind
from notifications.models import Target
from tenants.access import is_operator


class TargetForm(forms.ModelForm):
    url = forms.URLField(label="Webhook URL", max_length=500, required=False, assume_scheme="https",
                         help_text="The panel POSTs signed JSON here (docs/operations.md, Notifications).")
    kinds = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every kind you may hear of.")

    class Meta:
        model = Target
        fields = ["name", "kind", "email", "url", "kinds", "min_severity", "enabled"]
        labels = {"kind": "Send by", "email": "Email address", "min_severity": "Severity at least"}

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A tenant's user hears only of their VMs: the other kinds are not offered.
        kinds = SUBSCRIBABLE_KINDS if is_operator(user) else [k for k in SUBSCRIBABLE_KINDS if k in VM_KINDS]
        self.fields["kinds"].choices = [(k.value, EventKind(k).label) for k in kinds]
        if self.instance.pk:
            self.fields["kind"].disabled = True  # an email target does not become a webhook
        for name, field in self.fields.items():
            if name == "kinds":
                continue
            css = "form-check-input" if isinstance(field.widget, forms.CheckboxInput) else (
                "form-select" if isinstance(field.widget, forms.Select) else "form-control")
            field.widget.attrs["class"] = css
