"""Networks of the released SphereHead model, with upstream parameter names (reference.md §2, §5)."""
