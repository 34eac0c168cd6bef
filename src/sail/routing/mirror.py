"""Request mirroring (Envoy's `request_mirror_policies`): which clusters get a shadow copy.

Envoy sends each shadow copy fire and forget (its response is dropped, its failure does not
touch the request), with the Host/authority suffixed `-shadow` (`shadow_authority`).

Sampling follows Envoy's router: every policy with a `runtime_fraction` is tested against
the *same* random value of the request (Envoy uses the stream id), so two 50 % mirrors send
to both clusters or to neither, never to one alone; a policy without one mirrors every
request.

```python
for cluster in mirrors(result.route.action):          # [] for most routes
    send_copy(cluster, host=shadow_authority(authority))
```
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from sail.model import RouteAction

if TYPE_CHECKING:
    from collections.abc import Callable

    from sail.model import DirectResponse

__all__ = ["mirrors", "shadow_authority"]


def mirrors(
    action: RouteAction | DirectResponse | None, rand: Callable[[], float] = random.random
) -> list[str]:
    """The clusters to send a copy of this request to, in config order.

    `action` is the matched route's action (`RouteResult.route.action`); anything but a
    `RouteAction` mirrors nothing. `rand` (uniform in `[0, 1)`) is drawn at most once.
    """
    if not isinstance(action, RouteAction) or not action.request_mirror_policies:
        return []
    out = []
    draw = -1.0
    for policy in action.request_mirror_policies:
        fraction = policy.runtime_fraction
        if fraction is not None:
            if draw < 0.0:
                draw = rand()
            if draw * fraction.denominator >= fraction.numerator:
                continue
        out.append(policy.cluster)
    return out


def shadow_authority(authority: str) -> str:
    """`authority` with `-shadow` appended to the host, before any port, as Envoy writes
    it: `reviews` → `reviews-shadow`, `reviews:9080` → `reviews-shadow:9080`,
    `[::1]:80` → `[::1]-shadow:80`."""
    if authority.startswith("["):
        end = authority.find("]")
        if end >= 0:
            return f"{authority[: end + 1]}-shadow{authority[end + 1 :]}"
        return authority + "-shadow"
    host, colon, port = authority.partition(":")
    return f"{host}-shadow{colon}{port}"
