from axes.utils import reset
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Lift a login lock-out at once: the failed logins of USERNAME, of an address (--ip), "
        "or all of them (--all). Locks also end by themselves after the cool-off "
        "(PATCHWISE_LOGIN_COOLOFF_MINUTES)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?", help="the locked-out username")
        parser.add_argument("--ip", help="the locked-out client address")
        parser.add_argument("--all", action="store_true", help="every lock-out")

    def handle(self, *args, username, ip, all, **options):
        if all and (username or ip):
            raise CommandError("give --all alone, or a USERNAME and/or --ip")
        if not (all or username or ip):
            raise CommandError("say whose lock to lift: USERNAME, --ip ADDRESS or --all")
        cleared = 0
        if all:
            cleared = reset()
        if username:
            cleared += reset(username=username)
        if ip:
            cleared += reset(ip=ip)
        who = (
            "everyone"
            if all
            else " and ".join(
                part for part in (username and f"user {username}", ip and f"address {ip}") if part
            )
        )
        self.stdout.write(f"unlocked {who}: {cleared} failed-login record(s) cleared")
