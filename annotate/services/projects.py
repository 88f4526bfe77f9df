"""Projects: creating and changing them, and who may work in a restricted one."""

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction

from accounts.roles import require_curator
from accounts.services import audit_record, user_create
from annotate.models import Comparison, Project
from annotate.selectors import may_see_project, sees_every_project


def require_project_access(*, project: Project, user: AbstractBaseUser) -> None:
    """Restricted projects are for their members (annotators and curators) and staff; everyone
    else gets 403 (annotate.selectors.may_see_project)."""
    if not may_see_project(project=project, user=user):
        raise PermissionDenied(f"Project {project.slug!r} is restricted to its members.")


@transaction.atomic
def project_create(
    *,
    name: str,
    slug: str,
    guidelines: str = "",
    overlap: int = 1,
    restricted: bool = False,
    actor: AbstractBaseUser | None = None,
) -> Project:
    project = Project(
        name=name, slug=slug, guidelines=guidelines, overlap=overlap, restricted=restricted
    )
    project.full_clean()
    project.save()
    if restricted and actor is not None and not sees_every_project(actor):
        project.members.add(actor)  # a curator does not lock themself out of their project
    audit_record(
        actor=actor,
        action="project.create",
        target=project,
        new_value={"slug": slug, "overlap": overlap, "restricted": restricted},
    )
    return project


@transaction.atomic
def project_update(
    *,
    project: Project,
    actor: AbstractBaseUser | None = None,
    name: str | None = None,
    guidelines: str | None = None,
    overlap: int | None = None,
    restricted: bool | None = None,
    members: list[AbstractBaseUser] | None = None,
) -> Project:
    """Change a project; a new overlap re-opens or closes comparisons in the same transaction."""
    Project.objects.select_for_update().only("pk").get(pk=project.pk)  # one change at a time
    project.refresh_from_db()
    changes = {"name": name, "guidelines": guidelines, "overlap": overlap, "restricted": restricted}
    old, new = {}, {}
    for field, value in changes.items():
        if value is not None and getattr(project, field) != value:
            old[field], new[field] = getattr(project, field), value
            setattr(project, field, value)
    if old:
        project.full_clean()
        project.save(update_fields=list(old))
    if "overlap" in old:
        open_ = Comparison.objects.filter(project=project, label="")
        open_.filter(judgment_count__lt=project.overlap).update(needs_judgments=True)
        open_.filter(judgment_count__gte=project.overlap).update(needs_judgments=False)
    if members is not None:
        if project.restricted and actor is not None and not sees_every_project(actor):
            members = list({*members, actor})  # a curator does not lock themself out
        before = sorted(project.members.values_list("username", flat=True))
        project.members.set(members)
        after = sorted(user.get_username() for user in members)
        if before != after:
            old["members"], new["members"] = before, after
    if old:
        audit_record(
            actor=actor, action="project.update", target=project, old_value=old, new_value=new
        )
    return project


@transaction.atomic
def project_add_member(
    *, project: Project, user: AbstractBaseUser, actor: AbstractBaseUser | None = None
) -> bool:
    """Make ``user`` a member (a restricted project is for its members); False if they were."""
    if project.members.filter(pk=user.pk).exists():
        return False
    project.members.add(user)
    audit_record(
        actor=actor,
        action="project.member_add",
        target=project,
        new_value={"member": user.get_username()},
    )
    return True


@transaction.atomic
def project_remove_member(
    *, project: Project, user: AbstractBaseUser, actor: AbstractBaseUser | None = None
) -> bool:
    """Take ``user`` off the members; False if they were none. Their judgments stay."""
    if not project.members.filter(pk=user.pk).exists():
        return False
    project.members.remove(user)
    audit_record(
        actor=actor,
        action="project.member_remove",
        target=project,
        old_value={"member": user.get_username()},
    )
    return True


@transaction.atomic
def project_account_create(
    *, project: Project, username: str, role: str, actor: AbstractBaseUser
) -> tuple[AbstractBaseUser, str]:
    """A new account for someone joining ``project``, added to its members; returns (user,
    password). The password is generated, shown once, and lets them in only to choose their
    own."""
    require_curator(actor)
    user, password = user_create(username=username, role=role, one_time=True)
    project_add_member(project=project, user=user, actor=actor)
    audit_record(
        actor=actor,
        action="user.create",
        target=user,
        new_value={"role": role, "project": project.slug},
    )
    return user, password
