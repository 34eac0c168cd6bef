"""The one place a regex from config is compiled: RE2, with Envoy's limits.

Envoy and gRPC compile every `safe_regex` with RE2, which matches in time linear in the input
(no backtracking: `^(a+)+$` against a long header is as cheap as `^a+$`) and refuses what it
cannot do in linear time (backreferences `\\1`, lookarounds `(?=...)`). Envoy also refuses a
pattern whose RE2 program size is over the runtime `re2.max_program_size.error_level`
(default 100): `regex '...' RE2 program size of N > max program size of 100`. sail does the
same with the same default, so what Envoy NACKs sail NACKs and `sail apply` refuses.

Compile once, at decode; `Regex.matches` is the hot-path call (RE2 `FullMatch`).
"""

from __future__ import annotations

from typing import Any, Protocol

import re2

from sail.errors import ConfigError

__all__ = ["MAX_PROGRAM_SIZE", "InvalidRegex", "Regex", "RegexMatch", "compile_regex"]

MAX_PROGRAM_SIZE = 100
"""Envoy's default `re2.max_program_size.error_level`: a larger RE2 program is refused."""

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would log each refused pattern to stderr
# RE2's own Match on UTF-8 bytes, under the wrapper (see `Regex.__init__`); private names
# of google-re2, so a release without them falls back to the public `fullmatch`.
_ANCHOR_BOTH = getattr(getattr(re2, "_Anchor", None), "ANCHOR_BOTH", None)
_NO_MATCH = (-1, -1)


class InvalidRegex(ConfigError):
    """A config regex RE2 refuses, or one over the program-size limit.

    **Parameters**

    * `field` - the config field that held the pattern.
    * `reason` - RE2's reason (or the program-size rule), without the field.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class RegexMatch(Protocol):
    """What a search hands back: the span and the groups of one match."""

    def span(self, group: int = 0) -> tuple[int, int]: ...

    def group(self, group: int = 0) -> str | None: ...


class Regex:
    """A compiled RE2 pattern.

    **Parameters**

    * `pattern` - the source text.
    * `groups` - how many capturing groups it has.
    * `program_size` - RE2's program size (Envoy's cost measure).
    """

    __slots__ = ("_compiled", "_raw", "groups", "pattern", "program_size")

    def __init__(self, pattern: str, compiled: Any) -> None:
        self.pattern = pattern
        self._compiled = compiled
        # The wrapper's `fullmatch` decodes every span back to str offsets (about 4 us per
        # call); a yes/no full match needs only RE2's own Match on the UTF-8 bytes (~0.7 us).
        regexp = getattr(compiled, "_regexp", None)
        self._raw = regexp.Match if regexp is not None and _ANCHOR_BOTH is not None else None
        self.groups: int = compiled.groups
        self.program_size: int = compiled.programsize

    def matches(self, text: str) -> bool:
        """Whether the whole of `text` matches (RE2 `FullMatch`)."""
        raw = self._raw
        if raw is None:
            return self._compiled.fullmatch(text) is not None
        data = text.encode()
        return bool(raw(_ANCHOR_BOTH, data, 0, len(data))[0] != _NO_MATCH)

    def search(self, text: str, pos: int = 0) -> RegexMatch | None:
        """The first match in `text` at or after `pos` (str offsets)."""
        found: RegexMatch | None = self._compiled.search(text, pos)
        return found

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


def _shown(source: str) -> str:
    return repr(source) if len(source) <= 60 else repr(source[:60]) + "..."


def compile_regex(source: str, field: str = "regex") -> Regex:
    """Compile a config regex as Envoy's `safe_regex` does.

    Raises `InvalidRegex` naming `field` when the pattern is empty, RE2 refuses it (its
    reason, e.g. `does not compile (RE2): invalid perl operator: (?=`), or its program size is over
    `MAX_PROGRAM_SIZE`. Nothing else escapes.
    """
    if not source:
        raise InvalidRegex(field, "must not be empty")
    try:
        compiled = re2.compile(source, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise InvalidRegex(field, f"does not compile (RE2): {reason}") from None
    except Exception as exc:  # pybind11 may raise anything for odd input; fail closed
        raise InvalidRegex(field, f"does not compile (RE2): {exc}") from None
    size = compiled.programsize
    if size > MAX_PROGRAM_SIZE:
        raise InvalidRegex(
            field,
            f"regex {_shown(source)} RE2 program size of {size} > max program size of "
            f"{MAX_PROGRAM_SIZE} (Envoy's re2.max_program_size.error_level default)",
        )
    return Regex(source, compiled)
