from django.contrib.auth.mixins import LoginRequiredMixin, UserPassesTestMixin

from jobs.permissions import is_operator


class OperatorRequiredMixin(LoginRequiredMixin, UserPassesTestMixin):
    """Pages for the people who run the cluster."""

    def test_func(self) -> bool:
        return is_operator(self.request.user)
