from django.contrib.auth.mixins import LoginRequiredMixin, UserPassesTestMixin
from django.http import Http404

from tenants.access import is_operator


class HiddenUnlessAllowedMixin(LoginRequiredMixin, UserPassesTestMixin):
    """A page only some signed-in users may use (`test_func`). Anyone else signed in gets a 404: the
    page does not exist for them (a 403 would confirm that it does); visitors go to the login page."""

    def handle_no_permission(self):
        if self.request.user.is_authenticated:
            raise Http404("No such page.")
        return super().handle_no_permission()


class OperatorRequiredMixin(HiddenUnlessAllowedMixin):
    """Pages for the people who run the cluster."""

    def test_func(self) -> bool:
        return is_operator(self.request.user)
