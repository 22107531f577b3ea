"""The public surface of ``llenergymeasure`` is explicit, complete and sorted."""

import llenergymeasure


def test_all_is_sorted_and_unique() -> None:
    """``__all__`` lists each name once, in sorted order, so additions are easy to review."""
    names = llenergymeasure.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_all_names_exist_and_every_public_name_is_exported() -> None:
    """Every name in ``__all__`` resolves, and every public class or function is in it."""
    for name in llenergymeasure.__all__:
        assert hasattr(llenergymeasure, name), name
    public = {
        name
        for name, value in vars(llenergymeasure).items()
        if not name.startswith("_") and (isinstance(value, type) or callable(value))
    }
    assert public <= set(llenergymeasure.__all__), public - set(llenergymeasure.__all__)
