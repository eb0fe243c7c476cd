"""A dict whose keys are also attributes, as the EG3D-family code base uses for kwargs."""


class EasyDict(dict):
    """dict with attribute access: ``d.key`` is ``d['key']``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None
