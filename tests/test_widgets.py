"""The φ explorer works headless: moving the slider runs the callback and updates the result."""

import pytest

import effnet_edu as ee
from effnet_edu.widgets import PhiExplorer, official_table


def test_phi_slider_updates_result():
    explorer = PhiExplorer(phi=0.0)
    b0 = ee.efficientnet("b0")
    assert explorer.result["resolution"] == 224 and explorer.result["params"] == 5_288_548
    explorer.phi.value = 2.0  # what a student's drag does
    r = explorer.result
    d, w, g = ee.compound_coefficients(2.0)
    assert (r["depth"], r["width"], r["resolution"]) == (
        pytest.approx(d),
        pytest.approx(w),
        round(224 * g),
    )
    model = ee.efficientnet(phi=2.0)
    assert r["params"] == ee.count_params(model) and r["flops"] == ee.count_flops(model)
    assert r["flops_ratio"] == pytest.approx(ee.count_flops(model) / ee.count_flops(b0))
    assert "φ = 2.00" in explorer.summary() and "2^φ = 4.00" in explorer.summary()
    # What the student sees: the summary, the stage table and the plot, in the Output widget.
    text, table, plot = explorer.output.outputs
    assert text["text"] == explorer.summary() + "\n"
    markdown = table["data"]["text/markdown"]
    assert "| stem |" in markdown and "296x296" in markdown
    assert plot["data"]["image/png"]
    explorer.phi.value = 1.5  # fractional phi
    assert explorer.result["phi"] == 1.5
    assert explorer.result["params"] == ee.count_params(ee.efficientnet(phi=1.5))


def test_moving_back_reuses_the_result():
    explorer = PhiExplorer(phi=1.0, max_phi=2.0)
    first = explorer.result
    explorer.phi.value = 2.0
    explorer.phi.value = 1.0
    assert explorer.result is first


@pytest.mark.parametrize("phi, max_phi", [(8.0, 7.0), (-0.5, 7.0)])
def test_out_of_range_phi_is_refused(phi, max_phi):
    with pytest.raises(ValueError, match="phi") as error:
        PhiExplorer(phi=phi, max_phi=max_phi)
    assert repr(phi) in str(error.value)


def test_official_table_lists_all_variants():
    table = official_table()
    assert table.count("\n") == 9 and "| b7 | 6.63 | 3.1 (3.35) | 2.0 (1.88) | 600 (566) |" in table
