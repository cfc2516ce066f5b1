"""The app on Ray Serve: one replica per GPU (``python -m server.cluster``, or ``serve run deploy/serve.yaml``).

    options      the replica options, what a replica admits and Serve's deployment options (no Ray import)
    deployment   the Serve application: ``Flights`` (the FastAPI app of ``server.app``, one per replica) and ``Board``
    routing      the request router: the replica with the fewest ongoing requests
    board        what replicas report (flights, queue, metrics) and the jobs and recordings any ingress serves
    routes       the replica side: cluster-wide ``/readyz`` and ``/metrics``, jobs and recordings from any replica
    proxy        the proxy side: a flight whose replica died gets the protocol's error message
"""
