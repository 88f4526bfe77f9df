"""Every change of annotation state, one module per concern.

- projects: creating and changing projects, access to restricted ones
- cases: cases, responses and comparisons, one at a time or imported from a file
- queue: leasing the next comparison to an annotator
- judgments: recording a judgment and taking it back
- queue_sql: the SQL of the queue and judgments (PL/pgSQL calls and their SQLite twin)

Callers import from `annotate.services`; the names below are its public face.
"""

from annotate.importing import ImportRejected
from annotate.services.cases import (
    ImportResult,
    case_add_must_include,
    case_create,
    case_flag,
    case_set_checks,
    cases_import,
    comparison_create,
    response_create,
)
from annotate.services.judgments import (
    ComparisonTaken,
    JudgmentConflict,
    NotLeased,
    judgment_submit,
    judgment_undo,
)
from annotate.services.projects import (
    project_account_create,
    project_add_member,
    project_create,
    project_remove_member,
    project_update,
    require_project_access,
)
from annotate.services.queue import LEASE_DURATION, lease_next_comparison, lease_next_in_project
from annotate.services.queue_sql import flip_for

__all__ = [
    "ComparisonTaken",
    "ImportRejected",
    "ImportResult",
    "JudgmentConflict",
    "LEASE_DURATION",
    "NotLeased",
    "case_add_must_include",
    "case_create",
    "case_flag",
    "case_set_checks",
    "cases_import",
    "comparison_create",
    "flip_for",
    "judgment_submit",
    "judgment_undo",
    "lease_next_comparison",
    "lease_next_in_project",
    "project_account_create",
    "project_add_member",
    "project_create",
    "project_remove_member",
    "project_update",
    "require_project_access",
    "response_create",
]
