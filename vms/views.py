from django.conf import settings
from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, FormView, ListView, TemplateView

from jobs.models import Job
from jobs.redaction import redactor_for
from tenants.access import is_operator, may_create_vms, may_run, shows_cpu_server, tenant_of
from tenants.models import Tenant
from tenants.quotas import usage
from vms.affinity import may_manage, set_vm_groups, sharing
from vms.console import recent_sessions
from vms.filtersets import VmFilterSet
from vms.forms import VmCreateForm, VmGroupsForm, image_or_iso
from vms.job_params import VmCreateParams, VmMigrateParams
from vms.migration import migrate_vm
from vms.models import AntiAffinityGroup, VirtualMachine
from vms.passwords import generate_password
from vms.placement import Apart, Cluster, PlacementError, cpu_candidates
from vms.serializers import Audience, vm_summary
from vms.services import ACTIONS, VmRequest, create_vm, delete_vm, eject_cd, vm_action
from vms.stats_chart import DEFAULT_RANGE, RANGES, charts
from xenaoe_panel.mixins import HiddenUnlessAllowedMixin, OperatorRequiredMixin
from xenaoe_panel.security_headers import content_security_policy


class VmListView(LoginRequiredMixin, ListView):
    """The VMs the user may see, searched and filtered by the query string (vms/filtersets.py, which
    the API's list uses too). Bad filter values: the form's messages, status 400 and no VMs."""

    template_name = "vms/vm_list.html"
    paginate_by = 50
    filterset: VmFilterSet

    def get(self, request, *args, **kwargs):
        vms = VirtualMachine.objects.visible_to(request.user).select_related("cpu_server", "tenant")
        self.filterset = VmFilterSet(request.GET, vms.order_by("name"), request=request)
        response = super().get(request, *args, **kwargs)
        if self.filterset.errors:
            response.status_code = 400
        return response

    def get_queryset(self):
        return self.filterset.qs if self.filterset.is_valid() else self.filterset.queryset.none()

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        tenant = tenant_of(user)
        context.update(form=self.filterset.form, hide_cpu_server=not shows_cpu_server(user),
                       show_tenant=is_operator(user), may_create=may_create_vms(user), tenant=tenant,
                       quota=usage(tenant) if tenant and not is_operator(user) else None)
        return context


def ssh_command(vm: VirtualMachine, nics: list) -> str:
    """How to log in: settings.VM_SSH_COMMAND with the image's user and the first address (the
    demo's says to go through the lab's client namespace)."""
    address = next((nic.ip for nic in nics if nic.ip), None)
    if vm.image_id is None or address is None:
        return ""
    return settings.VM_SSH_COMMAND.format(user=vm.image.login_user, address=address)


def _visible_vm(request, name: str) -> VirtualMachine:
    """The VM if this user may see it; a 404 otherwise, whether it exists or not."""
    vms = VirtualMachine.objects.visible_to(request.user).select_related("cpu_server", "tenant")
    return get_object_or_404(vms, name=name)


class VmDetailView(LoginRequiredMixin, DetailView):
    slug_field = slug_url_kwarg = "name"
    template_name = "vms/vm_detail.html"

    def get_queryset(self):
        vms = VirtualMachine.objects.visible_to(self.request.user)
        vms = vms.select_related("cpu_server", "tenant", "image", "iso", "mirror")
        return vms.prefetch_related("mirror__legs__disk_server", "nics__network")  # the summary's

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user, vm = self.request.user, self.object
        operator = is_operator(user)
        context["summary"] = vm_summary(vm, Audience.of(user))
        context["jobs"] = Job.objects.visible_to(user).filter(vm=vm)[:20]
        context["actions"] = [
            (name, action.label) for name, action in ACTIONS.items()
            if vm.state in action.allowed_states and may_run(user, name)
        ]
        context.update(operator=operator, show_cpu_server=shows_cpu_server(user), may_delete=may_run(user, "delete"))
        context["nics"] = list(vm.nics.select_related("network").order_by("index"))
        context["ssh_command"] = ssh_command(vm, context["nics"])
        # The allocator's view of the other up servers: their free memory counts what it holds.
        context["migration_targets"] = [c for c in cpu_candidates() if c.server.pk != vm.cpu_server_id
                                        ] if operator else []
        context["may_console"] = may_run(user, "console")
        context["console_sessions"] = [_console_row(session, operator) for session in recent_sessions(vm)]
        shown = shows_cpu_server(user)
        context["groups_shared"] = [f"anti-affinity group {b.group}: {b.together(server_shown=shown)}"
                                    for b in sharing(vm)]
        form = VmGroupsForm(vm=vm)
        if may_manage(user) and form.fields["anti_affinity_groups"].queryset.exists():
            context["groups_form"] = form
        # Its CPU, disk and network figures (`?range=1h|24h`), from the samples the monitor recorded.
        context["vm_charts"] = charts(vm, self.request.GET.get("range", DEFAULT_RANGE))
        context["vm_chart_ranges"] = list(RANGES)
        return context


def _console_row(session, operator: bool) -> dict:
    """One console session as the VM page shows it: a tenant's users see who of theirs opened it and
    from where, and only that an operator did (not which one, nor from where)."""
    by_operator = session.via == "cli" or (session.user is not None and session.user.is_staff)
    hidden = by_operator and not operator
    return {"who": "an operator" if hidden else (session.username or "-"), "via": session.get_via_display(),
            "kind": session.get_kind_display(),
            "client": "" if hidden else session.client, "opened_at": session.opened_at,
            "closed_at": session.closed_at, "end_reason": session.end_reason}


class VmConsoleView(LoginRequiredMixin, TemplateView):
    """The serial console in the browser (static/js/console.js over ws/vms/<name>/console/serial/).
    Another tenant's VM: 404; the user's own without the tenant's `console` permission: 403."""

    template_name = "vms/vm_console.html"
    graphical = False

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        vm = _visible_vm(self.request, kwargs["name"])
        if not may_run(self.request.user, "console"):
            raise PermissionDenied("Your tenant may not use the console.")
        context.update(object=vm, login_user=vm.image.login_user if vm.image_id else "", graphical=self.graphical)
        return context

    def get_template_names(self):
        return ["vms/vm_vnc.html" if self.graphical else self.template_name]

    def render_to_response(self, context, **kwargs):
        response = super().render_to_response(context, **kwargs)
        # xterm.js sizes its cells and draws its theme through <style> elements it creates: this
        # page alone allows them (scripts stay 'self' only).
        if not self.graphical:
            response["Content-Security-Policy"] = content_security_policy(self.request, inline_style_elements=True)
        return response


class VmCreateView(HiddenUnlessAllowedMixin, FormView):
    """The wizard. Operators create for any tenant and may choose the CPU server; a tenant's
    user creates for their own tenant, within its quota, and the panel places the VM."""

    form_class = VmCreateForm
    template_name = "vms/vm_create.html"

    def test_func(self) -> bool:
        return may_create_vms(self.request.user)

    def get_form_kwargs(self):
        return super().get_form_kwargs() | {"user": self.request.user}

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        operator = is_operator(self.request.user)
        context["operator"] = operator
        context["candidates"] = cpu_candidates() if operator else []
        tenant = tenant_of(self.request.user)
        context["quota"] = usage(tenant) if tenant and not operator else None
        return context

    def form_valid(self, form):
        data = form.cleaned_data
        request = VmRequest(
            name=data["name"], vcpus=data["vcpus"], memory_mib=data["memory_mib"],
            disk_mib=data["disk_mib"], cpu_server=data.get("cpu_server") or None,
            allow_n_plus_one_break=data.get("allow_n_plus_one_break", False), tenant=data.get("tenant") or None,
            **image_or_iso(data.get("image") or ""), networks=(data["network"],) if data.get("network") else (),
            ssh_keys=(data["ssh_keys"],) if data.get("ssh_keys") else (),
            password=generate_password() if data.get("generate_password") else "",
            anti_affinity_groups=tuple(group.name for group in data.get("anti_affinity_groups") or ()),
        )
        try:
            job = create_vm(request, user=self.request.user)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(None if field in ("__all__", "networks") or field not in form.fields else field, errors)
            return self.form_invalid(form)
        redact = redactor_for(self.request.user)
        for broken in VmCreateParams.of(job).anti_affinity_broken:
            messages.warning(self.request, redact(broken))
        if request.password:
            # Shown once, here; the panel keeps only its hash (messages live in the session, server-side).
            messages.warning(self.request, f"The password of {request.name}'s login user is {request.password} "
                                           "- note it now: it is not shown again.")
        return redirect(job)


class QuotaView(LoginRequiredMixin, View):
    """A tenant's quota and usage as JSON, for the wizard to show what would remain as one types.
    A tenant's user gets their own tenant's; operators any tenant's (?tenant=SLUG)."""

    def get(self, request):
        if is_operator(request.user):
            tenant = Tenant.objects.filter(slug=request.GET.get("tenant", "")).first()
        else:
            tenant = tenant_of(request.user)
        if tenant is None:
            raise Http404("No such tenant.")
        return JsonResponse({"tenant": tenant.slug, "usage": [u.as_dict() for u in usage(tenant)]})


NEW_VM_LABEL = "the new VM"


class PlacementView(OperatorRequiredMixin, View):
    """What a VM of `memory_mib` would leave on each CPU server, N+1 included, which members of its
    anti-affinity groups (`groups`: their ids) each runs, and the server "automatic" would take (the
    allocator's own choice; null when none fits), for the wizard."""

    def get(self, request):
        try:
            memory_mib = max(int(request.GET.get("memory_mib", "0")), 0)
            group_ids = [int(pk) for pk in request.GET.getlist("groups")]
        except ValueError:
            return JsonResponse({"error": "memory_mib and groups must be whole numbers"}, status=400)
        apart = Apart.new(NEW_VM_LABEL, AntiAffinityGroup.objects.filter(pk__in=group_ids))
        cluster = Cluster.load()
        try:
            automatic = cluster.place(memory_mib, apart=apart,
                                      must_keep_n_plus_one=not request.GET.get("allow_n_plus_one_break")).server.name
        except PlacementError:
            automatic = None
        return JsonResponse({"memory_mib": memory_mib, "automatic": automatic, "servers": [
            {"name": h.server.name, "memory_mib": h.server.memory_mib,
             "used_mib": h.load.used_mib, "free_mib": h.free_mib,
             "free_after_mib": h.free_after_mib, "fits": h.fits, "keeps_n_plus_one": h.keeps_n_plus_one,
             "shortfalls": [str(s).replace("(new VM)", NEW_VM_LABEL) for s in h.shortfalls],
             "anti_affinity": [{"group": b.group, "members": list(b.peers)} for b in h.breaks]}
            for h in cluster.headroom(memory_mib, apart=apart)
        ]})


class VmDeleteView(LoginRequiredMixin, TemplateView):
    template_name = "vms/vm_delete.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        vm = _visible_vm(self.request, self.kwargs["name"])
        context["object"] = vm
        # Where its parts live (domain, exports, volumes) is for operators, as on the VM's page.
        context["summary"] = vm_summary(vm) if is_operator(user) else None
        context["show_cpu_server"] = shows_cpu_server(user)
        context["may_delete"] = may_run(user, "delete")
        return context

    def post(self, request, name: str):
        vm = _visible_vm(request, name)
        if request.POST.get("confirm_name") != vm.name:
            messages.error(request, f"Type the VM's name, {vm.name}, to confirm.")
            return redirect("vm-delete", name=vm.name)
        try:
            job = delete_vm(vm.name, user=request.user)
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            return redirect(vm)
        return redirect(job)


def _submit(request, vm_name: str, submit) -> HttpResponse:
    """Start a job from a button; a refusal comes back to the VM page as a message."""
    try:
        job = submit()
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
        return redirect("vm-detail", name=vm_name)
    return redirect(job)


def _optional_int(request, field: str, what: str) -> int | None:
    """A whole number from the form, or None when left empty; a clear error otherwise."""
    raw = request.POST.get(field) or None
    try:
        return int(raw) if raw is not None else None
    except ValueError as exc:
        raise ValidationError(f"{what}, not {raw!r}.") from exc


class VmActionView(LoginRequiredMixin, View):
    def post(self, request, name: str):
        vm = _visible_vm(request, name)
        return _submit(request, vm.name, lambda: vm_action(
            vm.name, request.POST.get("action", ""), request.user,
            shutdown_timeout_s=_optional_int(
                request, "timeout", "The shutdown timeout must be a whole number of seconds"),
        ))


class VmEjectView(LoginRequiredMixin, View):
    """Take the ISO out of the VM's CD drive: the end of an installation (vms.services.eject_cd)."""

    def post(self, request, name: str):
        vm = _visible_vm(request, name)
        return _submit(request, vm.name, lambda: eject_cd(vm.name, request.user))


class VmMigrateView(OperatorRequiredMixin, View):
    def post(self, request, name: str):
        vm = get_object_or_404(VirtualMachine, name=name)
        try:
            job = migrate_vm(vm.name, request.POST.get("target") or None, request.user, max_mib_per_s=_optional_int(
                request, "max_mib_per_s", "The bandwidth cap must be a whole number of MiB/s"))
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            return redirect(vm)
        for broken in VmMigrateParams.of(job).anti_affinity_broken:  # a target the operator chose
            messages.warning(request, broken)
        return redirect(job)


class VmGroupsView(LoginRequiredMixin, View):
    """The VM page's choice of its anti-affinity groups (vms.affinity.set_vm_groups): nothing moves;
    the page says where it now shares a CPU server with a member."""

    def post(self, request, name: str):
        vm = _visible_vm(request, name)
        form = VmGroupsForm(request.POST, vm=vm)
        if not form.is_valid():
            messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
            return redirect(vm)
        try:
            shared = set_vm_groups(vm.name, [g.name for g in form.cleaned_data["anti_affinity_groups"]], request.user)
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            return redirect(vm)
        names = ", ".join(g.name for g in form.cleaned_data["anti_affinity_groups"]) or "none"
        messages.success(request, f"{vm.name}'s anti-affinity groups: {names}")
        for broken in shared:
            messages.warning(request, f"anti-affinity group {broken.group}: "
                             f"{broken.together(server_shown=shows_cpu_server(request.user))} until one of them moves "
                             "(a migration without a target puts it apart)")
        return redirect(vm)
