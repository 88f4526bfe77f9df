import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, hash_token
from accounts.roles import CURATOR, ROLES, remember_role
from core import rows

TOKEN_PREFIX = "pw_"


# Members of this group are sent to the password change page until they have chosen their own
# password: accounts made for someone else start with a one-time password.
MUST_CHANGE_PASSWORD = "must-change-password"


@transaction.atomic
def user_create(
    *, username: str, role: str, password: str | None = None, one_time: bool = False
) -> tuple:
    """Create a user with one role; returns (user, password) — generated when none is given.

    A given password must pass AUTH_PASSWORD_VALIDATORS, as it would on Django's own forms. With
    ``one_time`` the password only lets the person in to choose their own."""
    if role not in ROLES:
        raise ValidationError({"role": f"role must be one of {', '.join(ROLES)}, not {role!r}"})
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        raise ValidationError({"username": f"user {username!r} already exists"})
    password = password or secrets.token_urlsafe(12)
    user = User(username=username)
    user.full_clean(exclude=["password"])
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from None
    user.set_password(password)
    user.save()
    user_set_role(user=user, role=role)
    if one_time:
        user.groups.add(Group.objects.get_or_create(name=MUST_CHANGE_PASSWORD)[0])
    return user, password


def must_change_password(user: AbstractBaseUser) -> bool:
    return user.groups.filter(name=MUST_CHANGE_PASSWORD).exists()


@transaction.atomic
def password_chosen(*, user: AbstractBaseUser) -> None:
    """The person set their own password: the one-time one is spent."""
    user.groups.remove(*Group.objects.filter(name=MUST_CHANGE_PASSWORD))
    audit_record(actor=user, action="user.password_change", target=user)


@transaction.atomic
def user_set_role(*, user: AbstractBaseUser, role: str) -> None:
    if role not in ROLES:
        raise ValidationError({"role": f"role must be one of {', '.join(ROLES)}, not {role!r}"})
    groups = {name: Group.objects.get_or_create(name=name)[0] for name in ROLES}
    user.groups.remove(*groups.values())
    user.groups.add(groups[role])
    user.__dict__.pop("_patchwise_is_curator", None)


def token_create(*, user: AbstractBaseUser, name: str = "") -> str:
    """Create an API token and return it; only its hash is stored, so it is shown once."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user=user, token_hash=hash_token(raw), prefix=raw[:8], name=name)
    token.full_clean()
    token.save()
    return raw


# Token checks this process made lately: token hash -> (valid until, the row). A script calling
# the API many times a second costs one statement per call less (about a fifth of a labelling
# call's CPU, bench/queue_bench.py); the price is that a change made by another process (a
# revoked token, a deactivated user, a new role) reaches this one within
# PATCHWISE_TOKEN_CHECK_SECONDS. Changes made in this process forget the checks at once.
_recent_checks: dict[str, tuple[float, tuple]] = {}
_RECENT_CHECKS_MAX = 10_000  # a bound on memory, whatever tokens are presented


def forget_token_checks(**_signal_kwargs) -> None:
    """Drop this process's remembered token checks (connected to token, user and role saves)."""
    _recent_checks.clear()


def token_authenticate(*, raw_token: str) -> AbstractBaseUser | None:
    """The active user whose unrevoked token this is, or None."""
    # Every API request runs this, so it is one plain, prepared statement: compiling the
    # equivalent select_related query through the ORM cost more CPU than running it.
    token_hash = hash_token(raw_token)
    recent = _recent_checks.get(token_hash)
    if recent is not None and recent[0] > time.monotonic():
        return _token_user(recent[1])
    row = _token_row(token_hash)
    if row is None:
        return None  # never remembered: unknown tokens cannot fill the memory
    if settings.PATCHWISE_TOKEN_CHECK_SECONDS > 0:
        if len(_recent_checks) >= _RECENT_CHECKS_MAX:
            _recent_checks.clear()
        _recent_checks[token_hash] = (
            time.monotonic() + settings.PATCHWISE_TOKEN_CHECK_SECONDS,
            row,
        )
    return _token_user(row)


def _token_user(row: tuple) -> AbstractBaseUser:
    """A fresh user instance per request (nothing mutable is shared between requests)."""
    user = rows.instance(get_user_model(), row[2:])
    remember_role(user, curator=bool(row[1]))  # role checks of this request ask no query
    return user


def _token_row(token_hash: str) -> tuple | None:
    """(token id, is curator, the user's columns...) of a valid token; marks it used."""
    User = get_user_model()
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value  # SQLite stores its own text format
    user_groups = User.groups.through._meta
    sql = f"""
        SELECT t.id, (t.last_used_at IS NULL OR t.last_used_at < %s),
               EXISTS (SELECT 1 FROM {user_groups.db_table} ug
                       JOIN {Group._meta.db_table} g ON g.id = ug.group_id
                       WHERE ug.user_id = u.{User._meta.pk.column} AND g.name = %s),
               {rows.columns(User, "u")}
        FROM {ApiToken._meta.db_table} t
        JOIN {User._meta.db_table} u ON u.{User._meta.pk.column} = t.user_id
        WHERE t.token_hash = %s AND t.revoked_at IS NULL AND u.is_active
    """  # noqa: S608 (table and column names from the models, values as parameters)
    params = [adapt(now - timedelta(seconds=60)), CURATOR, token_hash]
    with rows.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    token_id, stale = row[0], row[1]
    # Recording use at most once a minute keeps the hot API path free of a write per request.
    if stale:
        ApiToken.objects.filter(pk=token_id).update(last_used_at=now)
    return (token_id, *row[2:])


def token_revoke(*, token_or_prefix: str, username: str | None = None) -> ApiToken:
    """Revoke one token, named by the whole token or by its 8-character prefix (as the admin
    lists it), optionally of `username`. Every web worker refuses it within
    PATCHWISE_TOKEN_CHECK_SECONDS; this process at once."""
    tokens = ApiToken.objects.filter(revoked_at__isnull=True).select_related("user")
    if len(token_or_prefix) > 8:
        tokens = tokens.filter(token_hash=hash_token(token_or_prefix))
    else:
        tokens = tokens.filter(prefix=token_or_prefix)
    if username is not None:
        tokens = tokens.filter(user__username=username)
    found = list(tokens[:2])
    if not found:
        raise ValidationError({"token": f"no unrevoked token matches {token_or_prefix[:8]!r}"})
    if len(found) > 1:
        raise ValidationError(
            {"token": f"several tokens start with {token_or_prefix!r}: give the whole token or "
             "the user"}
        )  # fmt: skip
    token = found[0]
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_record(
        actor=None, action="token.revoke", target=token, new_value={"prefix": token.prefix}
    )
    forget_token_checks()
    return token


def audit_record(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    target: object,
    old_value: object = None,
    new_value: object = None,
) -> AuditEvent:
    """Write an audit row; call it inside the transaction of the change it describes."""
    event = AuditEvent(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target_type=type(target).__name__.lower(),
        target_id=str(getattr(target, "pk", target)),
        old_value=old_value,
        new_value=new_value,
    )
    event.save()
    return event
