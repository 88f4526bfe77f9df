from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.services import token_revoke
from core.messages import validation_message


class Command(BaseCommand):
    help = (
        "Revoke an API token, given whole or by the 8 characters the admin lists; every web "
        "worker refuses it within PATCHWISE_TOKEN_CHECK_SECONDS (1 s by default)."
    )

    def add_arguments(self, parser):
        parser.add_argument("token", help="the token, or its first 8 characters")
        parser.add_argument(
            "--user", default=None, help="the token's owner, if the prefix is shared"
        )

    def handle(self, *args, token, user, **options):
        try:
            revoked = token_revoke(token_or_prefix=token, username=user)
        except ValidationError as exc:
            raise CommandError(validation_message(exc)) from None
        self.stdout.write(f"revoked {revoked.prefix}… of {revoked.user.username}")
