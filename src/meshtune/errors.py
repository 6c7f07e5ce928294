class MeshtuneError(Exception):
    """A problem with the user's input or environment, shown as one line without a traceback.

    The message names the file (and line) when there is one, says what is wrong and how to fix
    it.
    """
