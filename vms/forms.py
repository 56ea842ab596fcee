from django import forms
from django.conf import settings

from hosts.models import CpuServer
from images.choices import ImageState
from images.services import visible_images
from networks.services import usable_networks
from tenants.access import is_operator, may_run
from tenants.models import Tenant
from vms.models import vm_name_validator
from vms.services import NO_IMAGE

AUTOMATIC = ""
ISO_PREFIX = "iso:"  # the image choice "iso:NAME": install from the ISO NAME
NO_TENANT = ""


class VmCreateForm(forms.Form):
    tenant = forms.ChoiceField(label="Tenant", required=False,
                               help_text="Who owns it: its users see and run it, within the tenant's quota.")
    name = forms.CharField(max_length=63, validators=[vm_name_validator],
                           help_text="Lower-case letters, digits and '-'.")
    vcpus = forms.IntegerField(label="vCPUs", min_value=1, initial=1)
    memory_mib = forms.IntegerField(label="Memory (MiB)", initial=128)
    disk_mib = forms.IntegerField(label="Disk (MiB)", initial=64,
                                  help_text="Mirrored on two disk servers; at least the image's size.")
    image = forms.ChoiceField(label="Operating system", required=False)
    network = forms.ChoiceField(label="Network", required=False,
                                help_text="The VM gets a MAC and an address of this network's pool.")
    ssh_keys = forms.CharField(
        label="More SSH public keys", required=False, widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One per line, besides the keys in your profile; for the image's login user.")
    generate_password = forms.BooleanField(
        label="Also give the login user a password (shown once, for the console)", required=False)
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
        images = visible_images(user).disks().filter(state=ImageState.READY)
        choices: list = [(image.name, f"{image.name}: {image.os_name} {image.os_version}, login {image.login_user}, "
                                      f"at least {image.min_disk_mib} MiB") for image in images]
        if user is None or is_operator(user):
            choices.append((NO_IMAGE, "None: an empty disk"))
        isos = visible_images(user).isos().filter(state=ImageState.READY)
        if isos and (user is None or may_run(user, "console")):
            # An empty disk and the ISO in the CD drive, booted first: installed through the console.
            choices = [("Images", choices), ("Install from an ISO (on the console), onto an empty disk", [
                (ISO_PREFIX + iso.name, f"{iso.name}: {iso.os_name} {iso.os_version}".strip()) for iso in isos])]
        self.fields["image"].choices = choices
        default = next((i for i in images if i.is_default), None)
        if default is not None:
            self.fields["image"].initial = default.name
            self.fields["disk_mib"].initial = max(default.min_disk_mib, 1024)
            self.fields["memory_mib"].initial = 256
        networks = usable_networks(user)
        self.fields["network"].choices = [
            (n.name, f"{n.name}: {n.cidr}" + (f", VLAN {n.vlan}" if n.vlan else "")) for n in networks]
        default_network = next((n for n in networks if n.is_default), None)
        if default_network is not None:
            self.fields["network"].initial = default_network.name
        if "cpu_server" in self.fields:
            self.fields["cpu_server"].choices = [(AUTOMATIC, "Automatic (most free memory)")] + [
                (s.name, s.name) for s in CpuServer.objects.order_by("name")
            ]
        for field in self.fields.values():  # Bootstrap's look, without JavaScript
            if not isinstance(field, forms.BooleanField):
                field.widget.attrs.setdefault(
                    "class", "form-select" if isinstance(field, forms.ChoiceField) else "form-control")


def image_or_iso(choice: str) -> dict[str, str]:
    """The VmRequest fields for the wizard's "Operating system" choice."""
    if choice.startswith(ISO_PREFIX):
        return {"image": NO_IMAGE, "iso": choice.removeprefix(ISO_PREFIX)}
    return {"image": choice}
