"""Attribute paths into modules, as Forge's patchers use them (``backend/utils.py``), for tests."""


def get_attr_with_parent(obj, path):
    names = path.split(".")
    parent = obj
    for name in names[:-1]:
        parent = getattr(parent, name)
    return parent, names[-1], getattr(parent, names[-1])


def get_attr(obj, path):
    return get_attr_with_parent(obj, path)[2]


def set_attr_raw(obj, path, value):
    parent, name, _old = get_attr_with_parent(obj, path)
    setattr(parent, name, value)
