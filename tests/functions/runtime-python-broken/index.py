# Fails at import: fcsup's runtime must report an init error.
import a_module_that_does_not_exist  # noqa: F401


def handler(event, context):
    return "never"
