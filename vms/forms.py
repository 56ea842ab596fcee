from django import forms
from django.conf import settings

from hosts.models import CpuServer
from tenants.access import is_operator
from tenants.models import Tenant
from vms.models import vm_name_validator

AUTOMATIC = ""
NO_TENANT = ""


class VmCreateForm(forms.Form):
    tenant = forms.ChoiceField(label="Tenant", required=False,
                               help_text="Who owns it: its users see and run it, within the tenant's quota.")
    name = forms.CharField(max_length=63, validators=[vm_name_validator],
                           help_text="Lower-case letters, digits and '-'.")
    vcpus = forms.IntegerField(label="vCPUs", min_value=1, initial=1)
    memory_mib = forms.IntegerField(label="Memory (MiB)", initial=128)
    disk_mib = forms.IntegerField(label="Disk (MiB)", initial=64)
    cpu_server = forms.ChoiceField(label="CPU server", required=False)
    allow_n_plus_one_break = forms.BooleanField(
        label="Place it even if a CPU server's failure would then leave guests without room (N+1)",
        required=False, help_text="Recorded in the job log with your name.",
    )

    def __init__(self, *args, user=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if user is not None and not is_operator(user):
            # A tenant's user creates for their own tenant and leaves placement to the panel.
            for name in ("tenant", "cpu_server", "allow_n_plus_one_break"):
                del self.fields[name]
        else:
            self.fields["tenant"].choices = [(NO_TENANT, "None: the operators' own")] + [
                (slug, f"{slug} ({name})" if name != slug else slug)
                for slug, name in Tenant.objects.values_list("slug", "name")
            ]
        self.fields["vcpus"].max_value = settings.VM_MAX_VCPUS
        self.fields["memory_mib"].min_value = settings.VM_MIN_MEMORY_MIB
        self.fields["memory_mib"].max_value = settings.VM_MAX_MEMORY_MIB
        self.fields["disk_mib"].min_value = settings.VM_MIN_DISK_MIB
        self.fields["disk_mib"].max_value = settings.VM_MAX_DISK_MIB
        for name in ("vcpus", "memory_mib", "disk_mib"):  # the browser checks the bounds too
            field = self.fields[name]
            field.widget.attrs.update({"min": field.min_value, "max": field.max_value})
        if "cpu_server" in self.fields:
            self.fields["cpu_server"].choices = [(AUTOMATIC, "Automatic (most free memory)")] + [
                (s.name, s.name) for s in CpuServer.objects.order_by("name")
            ]
        for field in self.fields.values():  # Bootstrap's look, without JavaScript
            if not isinstance(field, forms.BooleanField):
                field.widget.attrs.setdefault(
                    "class", "form-select" if isinstance(field, forms.ChoiceField) else "form-control")
