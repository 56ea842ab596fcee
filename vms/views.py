from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, FormView, ListView, TemplateView

from hosts.choices import HostState
from hosts.models import CpuServer
from vms.forms import VmCreateForm
from vms.models import VirtualMachine
from vms.placement import cpu_candidates, headroom
from vms.serializers import vm_summary
from vms.services import ACTIONS, VmRequest, create_vm, delete_vm, vm_action
from xenaoe_panel.mixins import OperatorRequiredMixin


class VmListView(OperatorRequiredMixin, ListView):
    queryset = VirtualMachine.objects.select_related("cpu_server")
    template_name = "vms/vm_list.html"
    paginate_by = 50


class VmDetailView(OperatorRequiredMixin, DetailView):
    model = VirtualMachine
    slug_field = slug_url_kwarg = "name"
    template_name = "vms/vm_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["summary"] = vm_summary(self.object)
        context["jobs"] = self.object.jobs.all()[:20]
        context["actions"] = [
            (name, action.label) for name, action in ACTIONS.items()
            if self.object.state in action.allowed_states
        ]
        context["migration_targets"] = CpuServer.objects.filter(state=HostState.UP).exclude(
            pk=self.object.cpu_server_id
        )
        return context


class VmCreateView(OperatorRequiredMixin, FormView):
    form_class = VmCreateForm
    template_name = "vms/vm_create.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["candidates"] = cpu_candidates()
        return context

    def form_valid(self, form):
        data = form.cleaned_data
        request = VmRequest(
            name=data["name"], vcpus=data["vcpus"], memory_mib=data["memory_mib"],
            disk_mib=data["disk_mib"], cpu_server=data["cpu_server"] or None,
            allow_n_plus_one_break=data["allow_n_plus_one_break"],
        )
        try:
            job = create_vm(request, user=self.request.user)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(None if field == "__all__" or field not in form.fields else field, errors)
            return self.form_invalid(form)
        return redirect(job)


class PlacementView(OperatorRequiredMixin, View):
    """What a VM of `memory_mib` would leave on each CPU server, N+1 included (for the wizard)."""

    def get(self, request):
        try:
            memory_mib = max(int(request.GET.get("memory_mib", "0")), 0)
        except ValueError:
            return JsonResponse({"error": "memory_mib must be a whole number"}, status=400)
        return JsonResponse({"memory_mib": memory_mib, "servers": [
            {"name": h.candidate.server.name, "memory_mib": h.candidate.server.memory_mib,
             "used_mib": h.candidate.used_mib, "free_mib": h.candidate.free_mib,
             "free_after_mib": h.free_after_mib, "fits": h.fits, "keeps_n_plus_one": h.keeps_n_plus_one,
             "shortfalls": [str(s).replace("(new VM)", "the new VM") for s in h.shortfalls]}
            for h in headroom(memory_mib)
        ]})


class VmDeleteView(OperatorRequiredMixin, TemplateView):
    template_name = "vms/vm_delete.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        vm = get_object_or_404(VirtualMachine, name=self.kwargs["name"])
        context["object"] = vm
        context["summary"] = vm_summary(vm)
        return context

    def post(self, request, name: str):
        vm = get_object_or_404(VirtualMachine, name=name)
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


class VmActionView(OperatorRequiredMixin, View):
    def post(self, request, name: str):
        vm = get_object_or_404(VirtualMachine, name=name)
        return _submit(request, vm.name, lambda: vm_action(
            vm.name, request.POST.get("action", ""), request.user,
            shutdown_timeout_s=_optional_int(
                request, "timeout", "The shutdown timeout must be a whole number of seconds"),
        ))


class VmMigrateView(OperatorRequiredMixin, View):
    def post(self, request, name: str):
        from vms.migration import migrate_vm

        vm = get_object_or_404(VirtualMachine, name=name)
        return _submit(request, vm.name, lambda: migrate_vm(
            vm.name, request.POST.get("target") or None, request.user,
            max_mib_per_s=_optional_int(request, "max_mib_per_s", "The bandwidth cap must be a whole number of MiB/s"),
        ))
