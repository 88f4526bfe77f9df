from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts, roles and API tokens"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from accounts.models import ApiToken
        from accounts.services import forget_token_checks

        # A token, user or role changed in this process (admin, commands) applies at once here;
        # other processes forget their checks within PATCHWISE_TOKEN_CHECK_SECONDS.
        User = get_user_model()
        for model in (ApiToken, User):
            post_save.connect(forget_token_checks, sender=model, dispatch_uid=f"forget-{model}")
            post_delete.connect(forget_token_checks, sender=model, dispatch_uid=f"gone-{model}")
        m2m_changed.connect(
            forget_token_checks, sender=User.groups.through, dispatch_uid="forget-roles"
        )
        from django.contrib.auth.signals import user_logged_in

        from accounts.middleware import remember_password_to_change

        user_logged_in.connect(remember_password_to_change, dispatch_uid="one-time-password")
