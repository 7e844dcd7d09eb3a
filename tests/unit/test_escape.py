import pytest
from dbus_next.validators import is_object_path_valid

from boxd.bus.service import box_path, escape_path_label


@pytest.mark.parametrize("name, label", [("dev", "dev"), ("my-box", "my_2dbox"),
                                         ("1x", "_31x"), ("a.b_c", "a_2eb_5fc")])
def test_escape(name, label):
    assert escape_path_label(name) == label
    assert is_object_path_valid(box_path(name))
