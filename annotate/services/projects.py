"""Projects: creating and changing them, and who may work in a restricted one."""

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction

from accounts.roles import is_curator
from accounts.services import audit_record
from annotate.models import Comparison, Project


def require_project_access(*, project: Project, user: AbstractBaseUser) -> None:
    """Restricted projects are for their members and curators; everyone else gets 403."""
    if not project.restricted or is_curator(user):
        return
    if not project.members.filter(pk=user.pk).exists():
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
