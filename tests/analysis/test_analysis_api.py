"""``llenergymeasure.analysis`` re-exports its public surface, sorted."""

from llenergymeasure import analysis


def test_all_is_sorted_complete_and_resolves() -> None:
    """``__all__`` is sorted, unique, resolves, and lists every public function it holds."""
    names = analysis.__all__
    assert names == sorted(names) and len(names) == len(set(names))
    assert all(hasattr(analysis, n) for n in names)
    public = {n for n, v in vars(analysis).items() if not n.startswith("_") and callable(v)}
    assert public <= set(names), public - set(names)
