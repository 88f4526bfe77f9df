from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.urls import reverse_lazy

from accounts.middleware import SESSION_KEY
from accounts.services import password_chosen


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change (old password, new one twice, the validators), which also
    spends a one-time password."""

    template_name = "registration/password_change.html"
    success_url = reverse_lazy("home")

    def form_valid(self, form):
        response = super().form_valid(form)
        password_chosen(user=form.user)
        self.request.session.pop(SESSION_KEY, None)
        messages.success(self.request, "Your password is changed.")
        return response

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "one_time": SESSION_KEY in self.request.session,
        }
