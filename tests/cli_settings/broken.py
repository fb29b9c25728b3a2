"""A settings module that fails to import."""

raise RuntimeError("this settings module is broken on purpose")
