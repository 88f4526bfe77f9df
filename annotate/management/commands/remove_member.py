from annotate.management.commands._common import MembershipCommand
from annotate.services import project_remove_member


class Command(MembershipCommand):
    help = (
        "Remove USERNAME from the members of project SLUG (a restricted project is visible only "
        "to its members and staff)."
    )
    done_message = "removed {username} from project {slug}"
    unchanged_message = "{username} is not a member of project {slug}"

    def change(self, *, project, user) -> bool:
        return project_remove_member(project=project, user=user)
