"""Custom request and response headers, compiled once per route: Envoy's header mutations.

A route's headers come from up to four levels of the config: its weighted cluster entry (when
one was picked), the route, its virtual host and the route configuration. Envoy evaluates
them one level after another (`router/config_impl.cc`):

* weighted cluster entry first, always;
* then route, virtual host, route configuration; so where two levels overwrite one header,
  the *least* specific wins. With the configuration's `most_specific_header_mutations_wins`
  the order is configuration, virtual host, route, and the route wins (over the weighted
  cluster entry too, which still goes first).

Within one level (`router/header_parser.cc`), against the headers as that level finds them:

1. the level's removals;
2. each header to add is checked against the headers left: `ADD_IF_ABSENT` only if the
   header is absent, `OVERWRITE_IF_EXISTS` only if present;
3. every overwrite replaces all values of its header (the last of one name wins), then
   every append adds one more line.

A value that is empty adds nothing unless `keep_empty_value` is set. Header names added are
lower case; names are compared case-insensitively, and the headers not touched keep their
order and case.

```python
mutation = result.policy.headers            # None when the route changes no header
if mutation is not None:
    upstream_headers = mutation.apply_request(upstream_headers)
    ...
    response_headers = mutation.apply_response(response_headers)
```
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sail.model import HeaderAppendAction

if TYPE_CHECKING:
    from sail.model import HeaderMutations, HeaderValueOption

__all__ = ["HeaderMutation", "compile_header_mutation"]

_APPEND = HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
_ADD_IF_ABSENT = HeaderAppendAction.ADD_IF_ABSENT
_OVERWRITE = HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
_OVERWRITE_IF_EXISTS = HeaderAppendAction.OVERWRITE_IF_EXISTS

# One level, compiled: (names to remove, (name, value, action) to add).
_Step = tuple[frozenset[str], tuple[tuple[str, str, HeaderAppendAction], ...]]


class HeaderMutation:
    """The header mutations of one route (and weighted cluster entry), in Envoy's order.

    Immutable; one instance serves every request on the route. `request` and `response`
    are false when that side changes nothing.
    """

    __slots__ = ("_request", "_response", "request", "response")

    def __init__(self, request: Sequence[_Step], response: Sequence[_Step]) -> None:
        self._request = tuple(request)
        self._response = tuple(response)
        self.request = bool(self._request)
        self.response = bool(self._response)

    def apply_request(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The request headers to send upstream: a new list, `headers` is not changed."""
        return _apply(self._request, headers)

    def apply_response(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The response headers to return downstream: a new list."""
        return _apply(self._response, headers)

    def __repr__(self) -> str:
        return f"HeaderMutation(request={self._request!r}, response={self._response!r})"


def _apply(steps: tuple[_Step, ...], headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    out = list(headers)
    for remove, adds in steps:
        if remove:
            out = [pair for pair in out if pair[0].lower() not in remove]
        if not adds:
            continue
        present: set[str] | None = None
        overwrite: dict[str, str] = {}
        append: list[tuple[str, str]] = []
        for name, value, action in adds:
            if action is _APPEND:
                append.append((name, value))
                continue
            if action is not _OVERWRITE:
                if present is None:
                    present = {pair[0].lower() for pair in out}
                if action is _ADD_IF_ABSENT:
                    if name not in present:
                        append.append((name, value))
                    continue
                if name not in present:  # OVERWRITE_IF_EXISTS
                    continue
            overwrite.pop(name, None)  # the last overwrite of a name wins, and goes last
            overwrite[name] = value
        if overwrite:
            out = [pair for pair in out if pair[0].lower() not in overwrite]
            out.extend(overwrite.items())
        out.extend(append)
    return out


def _step(to_add: tuple[HeaderValueOption, ...], to_remove: tuple[str, ...]) -> _Step | None:
    adds = tuple(
        (o.name, o.value, o.append_action) for o in to_add if o.value or o.keep_empty_value
    )
    remove = frozenset(to_remove)
    if not adds and not remove:
        return None
    return remove, adds


def compile_header_mutation(
    levels: Sequence[HeaderMutations | None],
    weighted: HeaderMutations | None = None,
) -> HeaderMutation | None:
    """Compile the levels of one route into one `HeaderMutation`; `None` when nothing is
    changed.

    `levels` are given in evaluation order: `(route, virtual host, route configuration)` by
    default, reversed for `most_specific_header_mutations_wins`; `weighted` (the picked
    weighted cluster entry's) is evaluated before all of them, in either mode. `None` stands
    for a level without mutations."""
    request: list[_Step] = []
    response: list[_Step] = []
    for level in (weighted, *levels):
        if level is None:
            continue
        step = _step(level.request_headers_to_add, level.request_headers_to_remove)
        if step is not None:
            request.append(step)
        step = _step(level.response_headers_to_add, level.response_headers_to_remove)
        if step is not None:
            response.append(step)
    if not request and not response:
        return None
    return HeaderMutation(request, response)
