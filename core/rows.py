"""Plain SQL for the few hot paths that skip the ORM's compiler: prepared statements, and
model instances built from their rows.

The annotation queue and token authentication run these statements for every request an
annotator's client makes; compiling the equivalent ORM queries cost more CPU than PostgreSQL
spent running them, and parsing and planning them anew cost PostgreSQL more than running them
(bench/queue_bench.py). Rows are converted with the same backend and field converters the ORM
applies, so the instances are the ones a queryset would have built.
"""

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.http import Http404

MAX_ID = 2**63 - 1  # the largest id a bigint column holds; a larger one matches no row

_LAYOUTS: dict = {}


def cursor():
    """A cursor for hot-path statements: prepared on PostgreSQL (config/postgresql), the
    ordinary cursor elsewhere."""
    db = connections[DEFAULT_DB_ALIAS]  # once: each use of the `connection` proxy costs a lookup
    return getattr(db, "prepared_cursor", db.cursor)()


def columns(model, alias: str) -> str:
    """The model's concrete columns, qualified by `alias`, in field order."""
    key = ("columns", model, alias, connection.vendor)
    if key not in _LAYOUTS:
        quote = connection.ops.quote_name
        fields = model._meta.concrete_fields
        _LAYOUTS[key] = ", ".join(f"{alias}.{quote(field.column)}" for field in fields)
    return _LAYOUTS[key]


def _layout(model):
    """The model's attnames in field order, and per field that has any: its position, column
    expression and converters (the backend's, then the field's own), as the ORM applies them."""
    key = ("layout", model, connection.vendor)
    if key not in _LAYOUTS:
        fields = model._meta.concrete_fields
        converting = []
        for position, field in enumerate(fields):
            col = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
            if converters:
                converting.append((position, col, converters))
        _LAYOUTS[key] = ([field.attname for field in fields], converting)
    return _LAYOUTS[key]


def instance(model, values):
    """An instance from its concrete columns in field order (as selected by `columns`)."""
    attnames, converting = _layout(model)
    if len(values) != len(attnames):
        raise ValueError(f"{model.__name__} has {len(attnames)} columns, not {len(values)}")
    values = list(values)
    if converting:
        db = connections[DEFAULT_DB_ALIAS]
        for position, col, converters in converting:
            value = values[position]
            if value is not None:
                for convert in converters:
                    value = convert(value, col, db)
                values[position] = value
    return model.from_db(DEFAULT_DB_ALIAS, attnames, values)


def instances(row, *models):
    """Split one joined row into an instance of each model, in the order they were selected."""
    result, start = [], 0
    for model in models:
        width = len(model._meta.concrete_fields)
        result.append(instance(model, row[start : start + width]))
        start += width
    return result


def one_or_404(model, sql: str, params) -> tuple:
    """The statement's single row, or Http404 worded as get_object_or_404 words it."""
    with cursor() as hot:
        hot.execute(sql, params)
        row = hot.fetchone()
    if row is None:
        raise Http404(f"No {model._meta.object_name} matches the given query.")
    return row
