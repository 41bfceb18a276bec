"""The argument parser every ``%aigrid`` command is read with."""

from __future__ import annotations

import difflib
import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser


class MagicParser(MagicArgumentParser):
    """Turns argparse's complaints into a UsageError that suggests the right spelling."""

    def __init__(self, **kwargs: Any) -> None:
        # No abbreviations: --gpu is a typo to point out, not a prefix to guess from.
        super().__init__(**kwargs)
        self.allow_abbrev = False

    def error(self, message: str) -> None:
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        hint = ""
        if unknown:
            options = [o for a in self._actions for o in a.option_strings]
            close = difflib.get_close_matches(unknown.group(1).split("=")[0], options, n=1)
            if close:
                hint = f"; did you mean {close[0]}?"
        raise UsageError(f"%aigrid {self.prog}: {message}{hint} (see %aigrid {self.prog} --help)")
