from collections.abc import Callable

from django import forms
from django.conf import settings

from hosts.models import CpuServer
from images.choices import ImageState
from images.services import visible_images
from networks.services import usable_networks
from tenants.access import is_operator, may_run
from tenants.models import Tenant
from vms.affinity import may_manage
from vms.models import AntiAffinityGroup, VirtualMachine, vm_name_validator
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
    anti_affinity_groups = forms.ModelMultipleChoiceField(
        label="Anti-affinity groups", required=False, queryset=AntiAffinityGroup.objects.none(),
        help_text="Kept off the CPU servers that run the other members of these groups, wherever another "
                  "server has room.")
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
            self.fields["cpu_server"].choices = [(AUTOMATIC, "Automatic (apart from its groups, most free memory)")] + [
                (s.name, s.name) for s in CpuServer.objects.order_by("name")
            ]
        groups = AntiAffinityGroup.objects.visible_to(user).select_related("tenant")
        if groups.exists() and may_manage(user):
            self.fields["anti_affinity_groups"].queryset = groups
            self.fields["anti_affinity_groups"].label_from_instance = group_label(user)
        else:  # nothing to choose from: no empty list box
            del self.fields["anti_affinity_groups"]
        for field in self.fields.values():  # Bootstrap's look, without JavaScript
            if not isinstance(field, forms.BooleanField):
                field.widget.attrs.setdefault(
                    "class", "form-select" if isinstance(field, forms.ChoiceField) else "form-control")


    def clean(self) -> dict:
        data = super().clean()
        owner = data.get("tenant") or None
        for group in data.get("anti_affinity_groups") or ():
            if "tenant" in self.fields and (group.tenant.slug if group.tenant else None) != owner:
                self.add_error("anti_affinity_groups", f"{group.label} is not a group of "
                               f"{owner or 'the operators'}: a VM's groups are its owner's")
        return data


def group_label(user) -> Callable[[AntiAffinityGroup], str]:
    """How a group is named in a choice: with its owner for operators, who see every tenant's."""
    return (lambda group: group.label) if user is None or is_operator(user) else (lambda group: group.name)


class VmGroupsForm(forms.Form):
    """The VM page's choice of its groups: its owner's."""

    anti_affinity_groups = forms.ModelMultipleChoiceField(
        label="Anti-affinity groups", required=False, queryset=AntiAffinityGroup.objects.none(),
        widget=forms.SelectMultiple(attrs={"class": "form-select form-select-sm"}),
        help_text="Nothing moves now: placements from now on keep it apart from the other members.")

    def __init__(self, *args, vm: VirtualMachine, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["anti_affinity_groups"]
        field.queryset = AntiAffinityGroup.objects.filter(tenant=vm.tenant_id)
        field.initial = list(vm.anti_affinity_groups.all())


class GroupForm(forms.Form):
    """A new anti-affinity group, on the groups' page."""

    name = forms.CharField(max_length=63, widget=forms.TextInput(attrs={"class": "form-control"}))
    description = forms.CharField(max_length=255, required=False,
                                  widget=forms.TextInput(attrs={"class": "form-control"}))
    tenant = forms.ChoiceField(label="Whose", required=False, widget=forms.Select(attrs={"class": "form-select"}),
                               help_text="Its members are this tenant's VMs.")

    def __init__(self, *args, user=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if user is not None and not is_operator(user):
            del self.fields["tenant"]  # a tenant's user makes their own tenant's
        else:
            self.fields["tenant"].choices = [(NO_TENANT, "The operators' own")] + list(
                Tenant.objects.values_list("slug", "slug"))


def image_or_iso(choice: str) -> dict[str, str]:
    """The VmRequest fields for the wizard's "Operating system" choice."""
    if choice.startswith(ISO_PREFIX):
        return {"image": NO_IMAGE, "iso": choice.removeprefix(ISO_PREFIX)}
    return {"image": choice}
