from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.roles import ROLES
from accounts.services import user_create
from core.messages import validation_message


class Command(BaseCommand):
    help = "Create a user with a role; prints the password when one is generated."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument("--password", help="omit to generate one (printed once)")

    def handle(self, *args, username, role, password, **options):
        try:
            user, used_password = user_create(username=username, role=role, password=password)
        except ValidationError as exc:
            raise CommandError(validation_message(exc)) from exc
        self.stdout.write(f"created {role} {user.username}")
        if password is None:
            self.stdout.write(f"password: {used_password}")
