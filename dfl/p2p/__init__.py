"""dfl's networking layer (moves bytes; knows nothing about blocks).

* :mod:`dfl.p2p.host` -- :func:`~dfl.p2p.host.open_host`, :class:`~dfl.p2p.host.HostConfig`,
  :class:`~dfl.p2p.host.P2PHost` on py-libp2p 0.8.1 (TCP + Noise + Yamux, gossipsub);
* :mod:`dfl.p2p.wire` -- pure codecs of the ``/dfl/blob/1`` and ``/dfl/peers/1`` protocols;
* :mod:`dfl.p2p.limits` -- pure rate limits, penalty scores and bans;
* :mod:`dfl.p2p.streams` -- size- and time-bounded stream reads/writes (trio);
* :mod:`dfl.p2p.errors` -- :class:`~dfl.p2p.errors.P2PError` and subclasses.

Importing this package does not import libp2p; import :mod:`dfl.p2p.host` for that.
"""
