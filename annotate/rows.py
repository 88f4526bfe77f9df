"""Model instances from plain SQL rows, for the few hot paths that skip the ORM's compiler.

The annotation queue runs these statements for every pair an annotator sees; compiling the
equivalent ORM queries cost more CPU than PostgreSQL spent running them (bench/queue_bench.py).
Rows are converted with the same backend and field converters the ORM applies, so the
instances are the ones a queryset would have built.
"""

from django.db import connection
from django.http import Http404

_LAYOUTS: dict = {}


def columns(model, alias: str) -> str:
    """The model's concrete columns, qualified by `alias`, in field order."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(field.column)}" for field in model._meta.concrete_fields)


def _layout(model):
    """Per concrete field: its column expression and its own from_db converters; attnames."""
    if model not in _LAYOUTS:
        fields = model._meta.concrete_fields
        cols = [field.get_col(model._meta.db_table) for field in fields]
        own = [field.get_db_converters(connection) for field in fields]
        _LAYOUTS[model] = (cols, own, [field.attname for field in fields])
    return _LAYOUTS[model]


def instance(model, values):
    """An instance from its concrete columns in field order (as selected by `columns`)."""
    cols, own, attnames = _layout(model)
    converted = []
    for col, converters, value in zip(cols, own, values, strict=True):
        if value is not None:
            for convert in connection.ops.get_db_converters(col) + converters:
                value = convert(value, col, connection)
        converted.append(value)
    return model.from_db(connection.alias, attnames, converted)


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
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        raise Http404(f"No {model._meta.object_name} matches the given query.")
    return row
