"""Forms of the annotation pages. They validate input; the writes happen in annotate.services."""

import time
from dataclasses import dataclass

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core import signing
from django.template.defaultfilters import filesizeformat

from accounts.roles import ANNOTATOR, CURATOR
from annotate.field_rules import MAX_TEXT_CHARS, InvalidValue, checks_cell, clean_check_items
from annotate.models import Project, Split
from training.engine.checks import FIELDS as CHECK_FIELDS
from training.engine.checks import verdict

_TICKET_SALT = "annotate.compare.ticket"
PICKS = ("left", "right", "tie", "both_bad")


@dataclass(frozen=True)
class Ticket:
    """What the page was showing when the annotator judged: which pair, which side on the left,
    and since when (the time spent is measured on the server from this)."""

    comparison_id: int
    shown_left: str
    shown_at_ms: int
    user_id: int

    def sign(self) -> str:
        return signing.dumps(
            [self.comparison_id, self.shown_left, self.shown_at_ms, self.user_id],
            salt=_TICKET_SALT,
        )

    @classmethod
    def issue(cls, *, comparison_id: int, shown_left: str, user_id: int) -> "Ticket":
        return cls(comparison_id, shown_left, int(time.time() * 1000), user_id)

    def duration_ms(self) -> int | None:
        elapsed = int(time.time() * 1000) - self.shown_at_ms
        # Longer than a day is someone who walked away, not time spent on the pair.
        return elapsed if 0 <= elapsed <= 24 * 3600 * 1000 else None


def choice_for(pick: str, shown_left: str) -> str:
    """Screen side to the comparison's a/b: "left" is whichever response was shown on the left."""
    if pick == "left":
        return shown_left
    if pick == "right":
        return "b" if shown_left == "a" else "a"
    return pick


def side_for(choice: str, shown_left: str) -> str | None:
    """The comparison's a/b back to the screen side this annotator saw it on."""
    if choice not in ("a", "b"):
        return None
    return "left" if choice == shown_left else "right"


class JudgeForm(forms.Form):
    ticket = forms.CharField()
    pick = forms.ChoiceField(
        choices=[(p, p) for p in PICKS],
        error_messages={
            "required": "Say which answer was better (A, B, tie or both bad); "
            "a correct answer does not pick a side for you."
        },
    )
    edited = forms.CharField(required=False, strip=False, max_length=MAX_TEXT_CHARS)
    # Phrases of the correct answer that a right answer must contain: the case's must_include.
    key_phrases = forms.CharField(required=False, max_length=5_000)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_ticket(self) -> Ticket:
        try:
            comparison_id, shown_left, shown_at_ms, user_id = signing.loads(
                self.cleaned_data["ticket"], salt=_TICKET_SALT
            )
        except (signing.BadSignature, ValueError, TypeError) as exc:
            raise forms.ValidationError("This page is out of date; reload it.") from exc
        if user_id != self.user.pk or shown_left not in ("a", "b"):
            raise forms.ValidationError("This page was opened by someone else; reload it.")
        return Ticket(comparison_id, shown_left, shown_at_ms, user_id)

    def clean_edited(self) -> str:
        return self.cleaned_data["edited"].strip()

    def clean(self) -> dict:
        cleaned = super().clean()
        text = cleaned.get("key_phrases") or ""
        phrases = [line.strip() for line in text.splitlines() if line.strip()]
        if phrases and not cleaned.get("edited"):
            raise forms.ValidationError(
                "Phrases that matter come from your correct answer: write the answer too."
            )
        try:
            phrases = clean_check_items("phrases that matter", phrases)
        except InvalidValue as exc:
            raise forms.ValidationError(str(exc)) from None
        missing = [
            phrase
            for phrase in phrases
            if not verdict(cleaned.get("edited", ""), must_include=[phrase]).passed
        ]
        if missing:
            raise forms.ValidationError(
                f"“{missing[0]}” is not in your correct answer; a phrase that matters is one of "
                "its own words."
            )
        cleaned["key_phrases"] = phrases
        return cleaned


RESTRICTED_HELP = (
    "Only its members (annotators and curators alike) and staff see it; manage them on the "
    "Team page."
)


class ProjectCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=100, help_text="Used in URLs and the API: letters, digits, -")
    guidelines = forms.CharField(
        required=False, widget=forms.Textarea, help_text="Markdown, shown to annotators."
    )
    overlap = forms.IntegerField(
        min_value=1, max_value=20, initial=1, help_text="How many annotators judge each pair."
    )
    restricted = forms.BooleanField(required=False, help_text=RESTRICTED_HELP)

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if Project.objects.filter(slug=slug).exists():
            raise forms.ValidationError(f"A project with the slug “{slug}” already exists.")
        return slug


class ProjectSettingsForm(forms.ModelForm):
    overlap = forms.IntegerField(
        min_value=1, max_value=20, help_text="How many annotators judge each pair."
    )

    class Meta:
        model = Project
        fields = ["name", "guidelines", "overlap", "restricted", "members"]
        widgets = {"members": forms.CheckboxSelectMultiple}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["members"].queryset = get_user_model().objects.filter(is_active=True)
        self.fields["members"].help_text = "Who may see this project when it is restricted."
        self.fields["restricted"].help_text = RESTRICTED_HELP


class CaseUploadForm(forms.Form):
    file = forms.FileField(help_text="JSONL or CSV, one case or pair per line.")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        limit = settings.PATCHWISE_MAX_UPLOAD_BYTES
        if upload.size > limit:
            raise forms.ValidationError(
                f"{upload.name} is {filesizeformat(upload.size)}; "
                f"the limit is {filesizeformat(limit)}. "
                "Split it into smaller files and upload them one by one."
            )
        return upload


class CaseFilterForm(forms.Form):
    """The filters of the case list; every field is optional and bad values are ignored."""

    YES_NO = [("", "any"), ("yes", "yes"), ("no", "no")]
    flagged = forms.ChoiceField(choices=YES_NO, required=False)
    split = forms.ChoiceField(choices=[("", "any"), *Split.choices], required=False)
    tag = forms.CharField(required=False, max_length=100)
    judged = forms.ChoiceField(choices=YES_NO, required=False)


class MemberAddForm(forms.Form):
    """Add an existing account to a project's members."""

    username = forms.CharField(max_length=150, label="Username")

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise forms.ValidationError(
                f"No active account is named “{username}”; create it below."
            )
        return user


class MemberRemoveForm(forms.Form):
    """Take someone off a project's members."""

    username = forms.CharField(max_length=150)

    def __init__(self, *args, project: Project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.project = project

    def clean_username(self):
        username = self.cleaned_data["username"]
        user = self.project.members.filter(username=username).first()
        if user is None:
            raise forms.ValidationError(f"“{username}” is not a member of this project.")
        return user


class AccountCreateForm(forms.Form):
    """A new account for a person who joins the project, with a one-time password."""

    username = forms.CharField(
        max_length=150,
        validators=[UnicodeUsernameValidator()],
        help_text="Letters, digits and @ . + - _ only.",
    )
    role = forms.ChoiceField(
        choices=[(ANNOTATOR, "annotator: labels pairs"),
                 (CURATOR, "curator: also imports, patches and manages the team")],
        initial=ANNOTATOR,
    )  # fmt: skip

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username=username).exists():
            raise forms.ValidationError(
                f"An account named “{username}” exists; add it as a member above."
            )
        return username


class CaseChecksForm(forms.Form):
    """What a right answer to a case must and must not say: one phrase per line, or /regex/."""

    must_include = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "30 days\n/refund(s)?/"}),
        help_text="One phrase per line; every one must appear in a right answer.",
    )
    must_not_include = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "7 days"}),
        help_text="One phrase per line; none may appear. /…/ is a regular expression.",
    )

    def _clean_checks(self, name: str) -> list[str]:
        try:
            return clean_check_items(name, checks_cell(name, self.cleaned_data[name]))
        except InvalidValue as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_must_include(self) -> list[str]:
        return self._clean_checks("must_include")

    def clean_must_not_include(self) -> list[str]:
        return self._clean_checks("must_not_include")

    @classmethod
    def for_case(cls, case, data=None) -> "CaseChecksForm":
        initial = {name: "\n".join(getattr(case, name)) for name in CHECK_FIELDS}
        return cls(data, initial=initial)
