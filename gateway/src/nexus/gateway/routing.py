"""Matching a request to a binding: 404 when no template matches, 405 when only the method
does not."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from nexus.gateway.descriptors import HttpBinding
from nexus.gateway.errors import GatewayError, not_found
from nexus.gateway.transcode import PathValues


class Router:
    """Finds the binding of a method and raw path, trying the most specific templates first.

    Args:
        bindings: The routes.
    """

    def __init__(self, bindings: Sequence[HttpBinding]) -> None:
        # Literal segments win over variables: /v1/anomaly/datasets before /v1/{x}/models.
        self.bindings = sorted(bindings, key=lambda b: (-b.template.literals, b.template.template))

    def match(self, method: str, raw_path: str) -> tuple[HttpBinding, PathValues]:
        """The binding and path variable values of a request.

        Raises:
            GatewayError: 404 when no route has the path, 405 (with `Allow`) when no route of
                that path takes the method.
        """
        allowed: list[str] = []
        for binding in self.bindings:
            values = binding.template.match(raw_path)
            if values is None:
                continue
            if binding.http_method == method:
                return binding, values
            allowed.append(binding.http_method)
        if allowed:
            raise _not_allowed(method, raw_path, allowed)
        raise not_found(f"no route for {raw_path}")


def _not_allowed(method: str, path: str, allowed: list[str]) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method} is not allowed on {path}; allowed: {', '.join(sorted(set(allowed)))}",
        headers={"Allow": ", ".join(sorted(set(allowed)))},
        status=405,
    )
