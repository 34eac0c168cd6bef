from __future__ import annotations

import sail
import sail.errors


def test_exported_names() -> None:
    assert sorted(sail.__all__) == sorted(
        [
            "Attempt",
            "AttemptObserver",
            "Bootstrap",
            "BootstrapError",
            "CallInfo",
            "ConfigError",
            "DeadlineExceeded",
            "Identity",
            "InProcessRegistrar",
            "Mesh",
            "MeshSnapshot",
            "MeshStatus",
            "Nack",
            "NoCredentials",
            "NoHealthyUpstream",
            "NoRoute",
            "Peer",
            "PeerIdentityMismatch",
            "Registrar",
            "RejectedService",
            "RequestContext",
            "RequestError",
            "ResourceError",
            "SailError",
            "UnknownService",
            "UnsupportedRequest",
            "UpstreamOverflow",
            "Workload",
            "XdsError",
            "current_request",
            "load_bootstrap",
            "operation",
            "parse_bootstrap",
        ]
    )
    for name in sail.__all__:
        assert hasattr(sail, name), name


def test_error_tree() -> None:
    for name in sail.errors.__all__:
        cls = getattr(sail.errors, name)
        assert issubclass(cls, sail.SailError)
    assert issubclass(sail.BootstrapError, ValueError)
    assert issubclass(sail.XdsError, ConnectionError)
    assert issubclass(sail.NoHealthyUpstream, sail.RequestError)
    # a refused mesh name is an unknown service to code that catches those
    assert issubclass(sail.RejectedService, sail.UnknownService)
    error = sail.RejectedService("reviews", "Listener 'reviews': no api_listener")
    assert (error.service, error.reason) == ("reviews", "Listener 'reviews': no api_listener")
    assert "no api_listener" in str(error)


def test_grpc_exports() -> None:
    import grpc
    import grpc.aio

    import sail.grpc

    for name in sail.grpc.__all__:
        assert hasattr(sail.grpc, name), name
    # sail's own gRPC failures are grpc errors and sail errors at once
    assert issubclass(sail.grpc.MeshRpcError, grpc.RpcError)
    assert issubclass(sail.grpc.MeshRpcError, sail.SailError)
    assert issubclass(sail.grpc.AioMeshRpcError, grpc.aio.AioRpcError)
    error = sail.grpc.AioMeshRpcError(grpc.StatusCode.UNAVAILABLE, "service 'x': gone")
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error.details() == "service 'x': gone"
