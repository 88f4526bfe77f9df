"""patchwise_judge takes p_require_lease: a judgment through the API must be of a comparison
leased to the caller, lease not expired ("not_leased" or "expired" otherwise). Before, any open
comparison could be judged by id, its left side made up. The compare page proves what it showed
with a signed ticket, and passes false. The SQLite twin is annotate/services/queue_sql.py.
"""

from importlib import import_module

from django.db import migrations

previous = import_module("annotate.migrations.0004_queue_functions")

JUDGE = """
CREATE OR REPLACE FUNCTION patchwise_judge(
    p_comparison bigint, p_user integer, p_privileged boolean, p_now timestamptz,
    p_choice varchar, p_as_shown boolean, p_shown_left varchar, p_edited text,
    p_corrected bigint, p_rationale text, p_duration integer, p_require_lease boolean
) RETURNS TABLE (outcome varchar, judgment_id bigint, judged_left varchar, judged_choice varchar)
LANGUAGE plpgsql VOLATILE ROWS 1 AS $$
DECLARE
    v_count integer;
    v_label varchar;
    v_project bigint;
    v_overlap integer;
    v_restricted boolean;
    v_id bigint;
    v_left varchar;
    v_live boolean;
    v_lease_left varchar;
    v_taken bigint;
    v_choice varchar;
BEGIN
    SELECT c.judgment_count, c.label, p.id, p.overlap, p.restricted
    INTO v_count, v_label, v_project, v_overlap, v_restricted
    FROM annotate_comparison c JOIN annotate_project p ON p.id = c.project_id
    WHERE c.id = p_comparison FOR UPDATE OF c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::varchar, NULL::bigint, NULL::varchar, NULL::varchar;
        RETURN;
    END IF;
    -- Restricted projects are for their members and staff (p_privileged).
    IF v_restricted AND NOT p_privileged AND NOT EXISTS (
        SELECT 1 FROM annotate_project_members m
        WHERE m.project_id = v_project AND m.user_id = p_user
    ) THEN
        RETURN QUERY SELECT 'forbidden'::varchar, NULL::bigint, NULL::varchar, NULL::varchar;
        RETURN;
    END IF;
    SELECT j.id, j.shown_left INTO v_id, v_left
    FROM annotate_judgment j WHERE j.comparison_id = p_comparison AND j.annotator_id = p_user;
    IF FOUND THEN
        RETURN QUERY SELECT 'exists'::varchar, v_id, v_left, NULL::varchar;
        RETURN;
    END IF;
    IF v_label <> '' THEN
        RETURN QUERY SELECT 'labelled'::varchar, NULL::bigint, NULL::varchar, NULL::varchar;
        RETURN;
    END IF;
    SELECT l.expires_at > p_now, l.shown_left INTO v_live, v_lease_left
    FROM annotate_lease l WHERE l.comparison_id = p_comparison AND l.annotator_id = p_user;
    -- A caller that proves nothing else (the API) judges only what it holds a live lease on.
    IF p_require_lease AND NOT coalesce(v_live, false) THEN
        RETURN QUERY SELECT CASE WHEN v_live IS NULL THEN 'not_leased' ELSE 'expired' END::varchar,
            NULL::bigint, NULL::varchar, NULL::varchar;
        RETURN;
    END IF;
    IF NOT coalesce(v_live, false) THEN
        SELECT count(*) INTO v_taken FROM annotate_lease l
        WHERE l.comparison_id = p_comparison AND l.expires_at > p_now
          AND l.annotator_id <> p_user;
        IF v_count + v_taken >= v_overlap THEN
            RETURN QUERY SELECT 'taken'::varchar, NULL::bigint, NULL::varchar, NULL::varchar;
            RETURN;
        END IF;
    END IF;
    -- The database has the last word: the count never passes the overlap.
    UPDATE annotate_comparison c
    SET judgment_count = c.judgment_count + 1, needs_judgments = (c.judgment_count + 1 < v_overlap)
    WHERE c.id = p_comparison AND c.judgment_count < v_overlap;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'full'::varchar, NULL::bigint, NULL::varchar, NULL::varchar;
        RETURN;
    END IF;
    v_left := coalesce(nullif(p_shown_left, ''), v_lease_left, 'a');
    v_choice := p_choice;
    IF p_as_shown AND v_left = 'b' AND p_choice IN ('a', 'b') THEN
        v_choice := CASE p_choice WHEN 'a' THEN 'b' ELSE 'a' END;
    END IF;
    INSERT INTO annotate_judgment
        (comparison_id, annotator_id, choice, edited, corrected_response_id, rationale,
         shown_left, duration_ms, created_at)
    VALUES (p_comparison, p_user, v_choice, p_edited, p_corrected, p_rationale, v_left,
            p_duration, p_now)
    RETURNING id INTO v_id;
    -- Its own lease is spent; expired ones of others on this row are cleared on the way.
    DELETE FROM annotate_lease l
    WHERE l.comparison_id = p_comparison AND (l.annotator_id = p_user OR l.expires_at <= p_now);
    INSERT INTO accounts_auditevent
        (actor_id, action, target_type, target_id, old_value, new_value, created_at)
    VALUES (p_user, 'judgment.create', 'judgment', v_id::text, NULL,
            jsonb_build_object('comparison', p_comparison, 'choice', v_choice,
                               'edited', p_edited <> '', 'shown_left', v_left),
            p_now);
    RETURN QUERY SELECT 'created'::varchar, v_id, v_left, v_choice;
END
$$;
"""

DROP_OLD = """
DROP FUNCTION IF EXISTS patchwise_judge(
    bigint, integer, boolean, timestamptz, varchar, boolean, varchar, text, bigint, text, integer);
"""

DROP_NEW = """
DROP FUNCTION IF EXISTS patchwise_judge(
    bigint, integer, boolean, timestamptz, varchar, boolean, varchar, text, bigint, text, integer,
    boolean);
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_OLD)
        schema_editor.execute(JUDGE)


def restore(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_NEW)
        schema_editor.execute(previous.JUDGE)


class Migration(migrations.Migration):
    dependencies = [("annotate", "0006_case_checks")]

    operations = [migrations.RunPython(create, restore)]
