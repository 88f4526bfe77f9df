"""Login throttling (issue 13, item 10): 50 wrong passwords then the right one used to log in.

Failed logins are counted per username and per client address, on the site's login and on
/admin/login/, behind the trusted proxies too; `unlock_login` and the cool-off lift a lock."""

import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from tests.conftest import ROOT

pytestmark = pytest.mark.django_db

LIMIT = 3


@pytest.fixture(autouse=True)
def small_limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


def _login(username, password, *, ip="10.0.0.1", path="/accounts/login/", **headers):
    client = Client(REMOTE_ADDR=ip)
    response = client.post(path, {"username": username, "password": password}, headers=headers)
    return response, client


def _logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_the_right_password_after_too_many_wrong_ones_is_refused_with_a_clear_page(curator):
    for attempt in range(1, LIMIT + 1):
        response, _client = _login(curator.username, "wrong-password")
        # the form again with its error, until the failure that reaches the limit
        assert response.status_code == (200 if attempt < LIMIT else 429)
    response, client = _login(curator.username, curator.password)
    assert response.status_code == 429 and not _logged_in(client)
    page = response.content.decode()
    assert "Too many failed logins" in page and f"{LIMIT} failed attempts" in page
    assert "15 minutes" in page and f"manage.py unlock_login {curator.username}" in page


def test_failures_count_per_username_whatever_the_address(curator):
    for index in range(LIMIT):
        _login(curator.username, "wrong-password", ip=f"10.0.1.{index}")
    response, client = _login(curator.username, curator.password, ip="10.0.1.99")
    assert response.status_code == 429 and not _logged_in(client)


def test_failures_count_per_address_whatever_the_username(curator, annotator):
    for index in range(LIMIT):
        _login(f"guess{index}", "wrong-password", ip="10.0.2.1")
    refused, client = _login(curator.username, curator.password, ip="10.0.2.1")
    assert refused.status_code == 429 and not _logged_in(client)
    elsewhere, client = _login(curator.username, curator.password, ip="10.0.2.2")
    assert elsewhere.status_code == 302 and _logged_in(client)


def test_the_admin_login_is_throttled_too(curator):
    curator.user.is_staff = True
    curator.user.save()
    for _ in range(LIMIT):
        _login(curator.username, "wrong-password", path="/admin/login/")
    response, client = _login(curator.username, curator.password, path="/admin/login/")
    assert response.status_code == 429 and not _logged_in(client)


def test_behind_trusted_proxies_the_forwarded_address_counts(curator, settings):
    settings.PATCHWISE_TRUSTED_PROXIES = 1
    proxy = "172.16.0.1"
    for index in range(LIMIT):  # one attacker, forging a different left-most address each time
        _login(
            f"guess{index}", "wrong", ip=proxy,
            X_FORWARDED_FOR=f"203.0.113.{index}, 198.51.100.7",
        )  # fmt: skip
    attacker, client = _login(
        curator.username, curator.password, ip=proxy, X_FORWARDED_FOR="198.51.100.7"
    )
    assert attacker.status_code == 429 and not _logged_in(client)
    # another client behind the same proxy is not locked out with the attacker
    colleague, client = _login(
        curator.username, curator.password, ip=proxy, X_FORWARDED_FOR="198.51.100.8"
    )
    assert colleague.status_code == 302 and _logged_in(client)


def test_unlock_login_and_the_cool_off_lift_a_lock(curator):
    from axes.models import AccessAttempt

    for _ in range(LIMIT):
        _login(curator.username, "wrong-password")
    assert _login(curator.username, curator.password)[0].status_code == 429
    out = StringIO()
    call_command("unlock_login", curator.username, stdout=out)
    assert out.getvalue().startswith(f"unlocked user {curator.username}:")
    assert _login(curator.username, curator.password)[0].status_code == 302

    for _ in range(LIMIT):
        _login(curator.username, "wrong-password")
    assert _login(curator.username, curator.password)[0].status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert _login(curator.username, curator.password)[0].status_code == 302


def test_the_limit_and_cool_off_come_from_the_environment():
    env = {**os.environ, "PATCHWISE_LOGIN_FAILURE_LIMIT": "7",
           "PATCHWISE_LOGIN_COOLOFF_MINUTES": "2.5", "PATCHWISE_TRUSTED_PROXIES": "2"}  # fmt: skip
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), "
        "s.PATCHWISE_TRUSTED_PROXIES)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"}, timeout=120,
    )  # fmt: skip
    assert result.stdout.split() == ["7", "150.0", "2"], result.stderr
