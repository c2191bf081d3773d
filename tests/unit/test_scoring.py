"""Turning a parsed table batch into a feature matrix: clean columns fast, bad values named."""

import math

import numpy as np
import pyarrow as pa
import pytest

from app.formats import Batch
from workers.scoring import tabular_features


def test_clean_numeric_columns_become_the_matrix_unchanged():
    table = pa.table({"a": [1.5, 2.5], "b": pa.array([3, 4], pa.int64()), "extra": ["x", "y"]})
    matrix, errors = tabular_features(Batch(rows=[7, 8], table=table), ["b", "a"])
    assert errors == []
    assert matrix.dtype == np.float32 and matrix.tolist() == [[3.0, 1.5], [4.0, 2.5]]


def test_each_bad_row_names_its_first_bad_field_in_column_order():
    table = pa.table({"a": [1.0, None, 3.0, math.inf, 5.0],
                      "b": ["1", "2", "oops", "4", "5"]})
    matrix, errors = tabular_features(Batch(rows=[10, 11, 12, 13, 14], table=table), ["a", "b"])
    assert [(e.row, e.code) for e in errors] == [(11, "invalid_value"), (12, "invalid_value"),
                                                 (13, "invalid_value")]
    assert "field 'a': missing or not finite" in errors[0].message
    assert "field 'b': not a number: 'oops'" in errors[1].message
    assert "field 'a'" in errors[2].message
    assert matrix[0].tolist() == [1.0, 1.0] and matrix[4].tolist() == [5.0, 5.0]


def test_a_missing_column_is_the_callers_problem():
    with pytest.raises(KeyError):
        tabular_features(Batch(rows=[0], table=pa.table({"a": [1.0]})), ["a", "b"])
