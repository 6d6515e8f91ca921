"""nova-ha's client of OpenStack, in layers (after sushy):

- ``auth``: clouds.yaml, settings from the parameters, password scripts, the Keystone
  session; ``token_cache``: Keystone's answer kept between runs;
- ``transport``: one request with its deadline, microversion negotiation, retries, bounded
  and redacted replies, and the HTTP status mapped to an exception;
- ``exceptions``: ``NovaError`` and its subclasses (``NotFound``, ``Conflict``...);
- ``views``: typed read-only ``Server``, ``Migration``, ``Service``, ``Hypervisor``, built
  from Nova's JSON (every ``OS-EXT-*`` key is read there);
- ``compute``: the ``Nova`` class: the resource calls nova-ha makes. Its writes for a failed
  host take a ``PowerOffConfirmed`` (nova_ha.lib.proof).

Nothing here imports keystoneauth1 at module level: the agents' metadata path stays light.
"""
