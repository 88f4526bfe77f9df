"""The job page's SVG charts draw any series a job can report: negative, crossing zero, flat,
one step, NaN/inf (skipped) and huge values, without raising and without leaving the viewBox."""

import math
import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from training.charts import HEIGHT, WIDTH, job_charts, line_chart

NS = "{http://www.w3.org/2000/svg}"
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e300, max_value=1e300),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.none(),
)


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


def polyline_points(svg: str) -> list[tuple[float, float]]:
    line = parse(svg).find(f"{NS}polyline")
    if line is None:
        return []
    return [tuple(map(float, pair.split(","))) for pair in line.get("points").split()]


def series_of(margins: list) -> list[dict]:
    return [{"step": step, "rewards/margins": value} for step, value in enumerate(margins, 1)]


@given(st.lists(values, max_size=40))
def test_any_series_draws_as_svg_inside_the_chart(margins):
    svg = line_chart(series_of(margins), "rewards/margins")
    parse(svg)  # well-formed
    finite = [v for v in margins if v is not None and math.isfinite(v)]
    points = polyline_points(svg)
    assert len(points) == len(finite)
    for x, y in points:
        assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT
    if not finite:
        assert "no steps yet" in svg


def test_a_margin_that_dips_below_zero_draws_a_dashed_zero_line_between_the_points():
    svg = line_chart(series_of([0.2, -0.4, -1.5, 0.8]), "rewards/margins")
    zero = [el for el in parse(svg).iter(f"{NS}line") if el.get("stroke-dasharray")]
    assert len(zero) == 1
    y_zero = float(zero[0].get("y1"))
    ys = [y for _, y in polyline_points(svg)]
    # SVG's y grows downwards: the positive points sit above the zero line, the negative below.
    assert ys[0] < y_zero < ys[1] and ys[3] < y_zero < ys[2]
    assert "last 0.8" in svg and ">-1.5<" in svg


def test_a_negative_series_that_never_crosses_zero_has_no_zero_line():
    svg = line_chart(series_of([-0.3, -0.2, -0.9]), "rewards/margins")
    assert "stroke-dasharray" not in svg
    assert len(polyline_points(svg)) == 3


def test_a_flat_series_sits_mid_chart_and_a_single_step_is_marked():
    flat = polyline_points(line_chart(series_of([0.5, 0.5, 0.5]), "rewards/margins"))
    assert len({y for _, y in flat}) == 1
    assert 0.4 * HEIGHT < flat[0][1] < 0.6 * HEIGHT
    huge_flat = polyline_points(line_chart(series_of([1e20, 1e20]), "rewards/margins"))
    assert 0.4 * HEIGHT < huge_flat[0][1] < 0.6 * HEIGHT
    single = parse(line_chart(series_of([-2.0]), "rewards/margins"))
    assert single.find(f"{NS}circle") is not None


def test_steps_are_labelled_as_integers():
    svg = line_chart([{"step": s, "loss": 0.5 / s} for s in range(1, 1201)], "loss")
    assert "step 1<" in svg and ">1200<" in svg


def test_nan_and_inf_steps_are_left_out_and_said_when_nothing_is_left():
    svg = line_chart(series_of([math.nan, math.inf, -math.inf]), "rewards/margins")
    assert "no steps yet" in svg and "nan" not in svg.lower() and "inf" not in svg.lower()
    mixed = line_chart(series_of([0.1, math.nan, -0.1]), "rewards/margins")
    assert len(polyline_points(mixed)) == 2 and "nan" not in mixed.lower()


def test_the_three_job_charts_render_together_with_a_negative_margin():
    rows = [
        {"step": 1, "loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.5},
        {"step": 2, "loss": 0.75, "rewards/margins": -0.12, "rewards/accuracies": 0.25},
        {"step": 3, "loss": 0.41, "rewards/margins": 0.9, "rewards/accuracies": 1.0},
    ]
    html = str(job_charts(rows))
    assert len(re.findall(r"<svg ", html)) == 3
    assert html.count("stroke-dasharray") == 1  # only the margins cross zero


def test_the_largest_floats_stay_on_the_chart():
    """Found by the property test: padding a flat series at the float limit overflowed to inf,
    and every point became NaN."""
    for flat in (1.7976931348623157e308, -1.7976931348623157e308):
        points = polyline_points(line_chart(series_of([flat, flat]), "rewards/margins"))
        assert [y for _, y in points] == [points[0][1]] * 2 and 0 < points[0][1] < HEIGHT
    spread = polyline_points(line_chart(series_of([-1e308, 1e308]), "rewards/margins"))
    assert spread[0][1] > spread[1][1]
