"""Data for the annotation tests, built through annotate.services as a user's actions would."""

import pytest

from accounts.services import user_create


@pytest.fixture
def fast_password_hashing(settings):
    """Tests that create many users skip PBKDF2's deliberate slowness; nothing here logs in."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def project(db):
    from annotate.services import project_create

    return project_create(name="Support bot", slug="support")


@pytest.fixture
def make_user(db):
    """make_user("ann2") -> a user with the annotator role (or role="curator")."""

    def make(username: str, role: str = "annotator"):
        user, _password = user_create(username=username, role=role, password=f"{username}-pw-9x!")
        return user

    return make


def make_pairs(project, count: int, *, prefix: str = "q") -> list:
    """`count` cases, each with one comparison of two imported responses (a pair to judge)."""
    from annotate.services import case_create, comparison_create, response_create

    comparisons = []
    for index in range(count):
        case = case_create(project=project, prompt=f"{prefix}{index}?", source="test")
        a = response_create(case=case, text=f"answer A to {prefix}{index}", origin="imported")
        b = response_create(case=case, text=f"answer B to {prefix}{index}", origin="imported")
        comparisons.append(comparison_create(case=case, response_a=a, response_b=b))
    return comparisons
