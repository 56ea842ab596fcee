from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.views.generic import DetailView, FormView, ListView, TemplateView

from vms.forms import VmCreateForm
from vms.models import VirtualMachine
from vms.placement import cpu_candidates
from vms.serializers import vm_summary
from vms.services import VmRequest, create_vm, delete_vm
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
        )
        try:
            job = create_vm(request, user=self.request.user)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(None if field == "__all__" or field not in form.fields else field, errors)
            return self.form_invalid(form)
        return redirect(job)


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
