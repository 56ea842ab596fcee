from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
        from django.db.models.signals import post_save, pre_save

        from audit import accounts

        user_logged_in.connect(accounts.logged_in, dispatch_uid="xenaoe-audit-login")
        user_logged_out.connect(accounts.logged_out, dispatch_uid="xenaoe-audit-logout")
        user_login_failed.connect(accounts.login_failed, dispatch_uid="xenaoe-audit-login-failed")
        user_model = get_user_model()
        pre_save.connect(accounts.user_saving, sender=user_model, dispatch_uid="xenaoe-audit-user-saving")
        post_save.connect(accounts.user_saved, sender=user_model, dispatch_uid="xenaoe-audit-user-saved")
