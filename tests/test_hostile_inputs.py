"""Hostile CSV files (issue #21): other encodings and line ends, a byte order mark, 100,000 rows of bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest

import raw_fixtures
from spml_tf.data import convert
from spml_tf.data import shard_writer
from spml_tf.data.datasets import user_csv
from spml_tf.core.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = "image,labels\na.jpg,café\nb.jpg,dog|café\n"


def _read(tmp_path, data):
    """The Source of a train CSV holding the bytes `data`."""
    path = tmp_path / "train.csv"
    path.write_bytes(data)
    return user_csv.read(str(path), str(tmp_path / "images"), "x")


def _assert_read_correctly(release):
    assert release.class_names == ("café", "dog")
    assert release.train.ids == ("a.jpg", "b.jpg")
    np.testing.assert_array_equal(release.train.labels, [[1, 0], [1, 1]])
    assert release.problems == ()


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
def test_a_csv_with_any_line_end_reads_the_same(tmp_path, line_end):
    _assert_read_correctly(_read(tmp_path, ROWS.replace("\n", line_end).encode()))


def test_a_csv_with_a_utf8_byte_order_mark_reads_the_same(tmp_path):
    _assert_read_correctly(_read(tmp_path, ROWS.encode("utf-8-sig")))


def test_a_bare_cr_csv_reports_its_line_numbers(tmp_path):
    (tmp_path / "images").mkdir()
    release = _read(tmp_path, "image,labels\ra.jpg,cat\r\rb.jpg,\r".encode())
    assert [problem.image for problem in release.problems] == ["b.jpg"]
    assert release.problems[0].reason.endswith("train.csv:4)")  # line 3 is empty


def test_a_latin1_csv_is_one_line_naming_the_byte_and_its_line(tmp_path):
    with pytest.raises(DataError) as error:
        _read(tmp_path, ROWS.encode("latin-1"))
    message = str(error.value)
    assert "train.csv is not UTF-8 text" in message and "byte 0xe9 at offset 22, line 2" in message
    assert message.endswith("save it as UTF-8") and "\n" not in message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_csv_is_one_line_saying_so(tmp_path, encoding):
    with pytest.raises(DataError, match=r"train.csv is not UTF-8 text \(byte 0x.. at offset [01], line 1\), it looks "
                                        r"like UTF-16: save it as UTF-8$"):
        _read(tmp_path, ROWS.encode(encoding))


def test_an_oversized_field_is_one_line_naming_its_line(tmp_path):
    with pytest.raises(DataError, match=r"train.csv:3: not a readable CSV row \(field larger than field limit"):
        _read(tmp_path, f"image,labels\na.jpg,cat\nb.jpg,{'x' * 200_000}\n".encode())


def test_the_command_line_says_a_latin1_csv_in_one_line(tmp_path):
    (tmp_path / "train.csv").write_bytes(ROWS.encode("latin-1"))
    result = subprocess.run([sys.executable, "-m", "spml_tf.convert", "--dataset=csv", "--name=x",
                             f"--image_root={tmp_path}", f"--train_csv={tmp_path / 'train.csv'}",
                             f"--out_dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("convert: error:")]
    assert len(lines) == 1 and "save it as UTF-8" in lines[0], result.stderr[-2000:]


def test_100k_rows_naming_missing_images_are_reported_readably(tmp_path):
    """Seconds, not minutes; the error shows the first problems, the report file all of them."""
    for i in range(5):
        raw_fixtures.write_jpeg(str(tmp_path / "images" / f"{i}.jpg"), seed=i)
    rows = [(f"{i}.jpg", [("cat", "dog", "fish")[i % 3]]) for i in range(100_000)]
    raw_fixtures.write_csv(str(tmp_path / "train.csv"), rows)
    with pytest.raises(DataError) as error:
        convert.convert(convert.ConvertConfig(dataset="csv", name="x", image_root=str(tmp_path / "images"),
                                              train_csv=str(tmp_path / "train.csv"), out_dir=str(tmp_path / "out")),
                        log=lambda message: None)
    message = str(error.value)
    assert message.startswith("99995 bad input(s)") and "file not found" in message
    assert f"... and {99995 - shard_writer.MAX_REPORTED} more" in message
    assert len(message.splitlines()) == shard_writer.MAX_REPORTED + 3
    with open(tmp_path / "out" / shard_writer.REPORT) as f:
        assert len(f.read().splitlines()) == 1 + 99995


def test_100k_rows_each_naming_its_own_class_are_refused_before_a_rows_by_classes_matrix(tmp_path):
    """A labels column that is not class names: 100,000 classes would need 100,000 x 100,000 labels (40 GB)."""
    raw_fixtures.write_csv(str(tmp_path / "train.csv"), [(f"{i}.jpg", [f"id{i}"]) for i in range(100_000)])
    with pytest.raises(DataError, match=r"train.csv: 100,000 rows x 100,000 classes \('id0', 'id1', 'id10', \.\.\.\) "
                                        r"are more labels than the converter holds"):
        user_csv.read(str(tmp_path / "train.csv"), str(tmp_path / "images"), "x")


def test_a_row_with_more_fields_than_the_header_is_a_problem_naming_its_line(tmp_path):
    """An unquoted comma in a path shifts the labels into a third column: named, not read as another class."""
    path = tmp_path / "train.csv"
    path.write_text("image,labels\na.jpg,dog\nmy,photo.jpg,cat\n")
    source = user_csv.read(str(path), str(tmp_path), "pets")
    assert [problem.reason for problem in source.problems] == [
        f"1 more field(s) than the header 'image,labels' (quote a path or label holding a comma) ({path}:3)"]
