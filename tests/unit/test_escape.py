import pytest
from dbus_next.validators import is_object_path_valid

from boxd.paths import box_path, describe_missing, escape_path_label, unescape_path_label


@pytest.mark.parametrize("name, label", [("dev", "dev"), ("my-box", "my_2dbox"),
                                         ("1x", "_31x"), ("a.b_c", "a_2eb_5fc")])
def test_escape(name, label):
    assert escape_path_label(name) == label
    assert unescape_path_label(label) == name
    assert is_object_path_valid(box_path(name))
    assert describe_missing(box_path(name)) == f"there is no box named {name!r}"
