"""The queue's two hot operations as PostgreSQL functions: one round trip each.

A lease took eight statements and a judgment eleven, each a round trip that cost the web worker
and PostgreSQL more CPU than the work itself (bench/queue_bench.py). Inside a function the
statements keep their order and their guarantees: in READ COMMITTED every statement of a
VOLATILE function takes a fresh snapshot, so the live-lease recount after the row lock still sees
every lease committed meanwhile, exactly as the separate statements did. PL/pgSQL also keeps
their plans for the session, so they are planned once per connection.

`annotate/services/queue_sql.py` calls them on PostgreSQL and runs the same steps as separate
statements on SQLite (the embedded default for one person). A change to either must change both:
tests/annotate/test_queue.py runs on both.
"""

from django.db import migrations

LEASE_NEXT = """
CREATE OR REPLACE FUNCTION patchwise_lease_next(
    p_project bigint, p_user integer, p_now timestamptz, p_expires timestamptz,
    p_overlap integer, p_side varchar, p_async_commit boolean
) RETURNS TABLE (leased_id bigint, leased_side varchar)
LANGUAGE plpgsql VOLATILE ROWS 1 AS $$
DECLARE
    v_comparison bigint;
    v_side varchar;
    v_taken bigint;
    v_tried bigint[] := '{}';
BEGIN
    -- A lease is a hold that expires by itself: when this call is its own transaction, its
    -- commit need not wait for the disk (a crash loses at most the leases of the last moment,
    -- never a judgment; it cannot corrupt anything).
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- One lease per annotator and project: asking again (a reload) renews and returns it.
    SELECT l.comparison_id, l.shown_left INTO v_comparison, v_side
    FROM annotate_lease l JOIN annotate_comparison c ON c.id = l.comparison_id
    WHERE l.annotator_id = p_user AND c.project_id = p_project AND l.expires_at > p_now
    ORDER BY l.id LIMIT 1;
    IF FOUND THEN
        UPDATE annotate_lease l SET expires_at = p_expires
        WHERE l.comparison_id = v_comparison AND l.annotator_id = p_user;
        RETURN QUERY SELECT v_comparison, v_side;
        RETURN;
    END IF;
    FOR attempt IN 1..20 LOOP
        -- Open, not judged by this annotator, a free slot once others' live leases count;
        -- started ones first, then the oldest (the partial index annotate_cmp_queue_idx).
        SELECT c.id INTO v_comparison FROM annotate_comparison c
        WHERE c.project_id = p_project AND c.needs_judgments AND c.id <> ALL (v_tried)
          AND NOT EXISTS (
              SELECT 1 FROM annotate_judgment j
              WHERE j.comparison_id = c.id AND j.annotator_id = p_user)
          AND c.judgment_count + (
              SELECT count(*) FROM annotate_lease l
              WHERE l.comparison_id = c.id AND l.expires_at > p_now AND l.annotator_id <> p_user
          ) < p_overlap
        ORDER BY c.judgment_count DESC, c.id LIMIT 1
        FOR UPDATE OF c SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- The candidate's snapshot predates our row lock; this statement's is newer, so it
        -- counts every lease any other transaction committed for the row.
        SELECT c.judgment_count + (
            SELECT count(*) FROM annotate_lease l
            WHERE l.comparison_id = c.id AND l.expires_at > p_now AND l.annotator_id <> p_user)
        INTO v_taken FROM annotate_comparison c WHERE c.id = v_comparison;
        IF v_taken < p_overlap THEN
            -- The annotator's own expired lease on this row, if one is left, is renewed.
            INSERT INTO annotate_lease AS l
                (comparison_id, annotator_id, expires_at, shown_left, created_at)
            VALUES (v_comparison, p_user, p_expires, p_side, p_now)
            ON CONFLICT ON CONSTRAINT annotate_one_lease_per_annotator
            DO UPDATE SET expires_at = EXCLUDED.expires_at, shown_left = EXCLUDED.shown_left;
            RETURN QUERY SELECT v_comparison, p_side;
            RETURN;
        END IF;
        v_tried := v_tried || v_comparison;
    END LOOP;
END
$$;
"""

JUDGE = """
CREATE OR REPLACE FUNCTION patchwise_judge(
    p_comparison bigint, p_user integer, p_privileged boolean, p_now timestamptz,
    p_choice varchar, p_as_shown boolean, p_shown_left varchar, p_edited text,
    p_corrected bigint, p_rationale text, p_duration integer
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
    -- Restricted projects are for their members and curators (p_privileged).
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

DROP = """
DROP FUNCTION IF EXISTS patchwise_lease_next(
    bigint, integer, timestamptz, timestamptz, integer, varchar, boolean);
DROP FUNCTION IF EXISTS patchwise_judge(
    bigint, integer, boolean, timestamptz, varchar, boolean, varchar, text, bigint, text, integer);
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(LEASE_NEXT)
        schema_editor.execute(JUDGE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0003_queue_index_started_first"),
        ("accounts", "0002_audit_event"),
    ]

    operations = [migrations.RunPython(create, drop)]
