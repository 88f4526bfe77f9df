from annotate.management.commands._common import MembershipCommand
from annotate.services import project_add_member


class Command(MembershipCommand):
    help = (
        "Add USERNAME to the members of project SLUG (a restricted project is visible only "
        "to its members and staff)."
    )
    done_message = "added {username} to project {slug}"
    unchanged_message = "{username} is already a member of project {slug}"

    def change(self, *, project, user) -> bool:
        return project_add_member(project=project, user=user)
